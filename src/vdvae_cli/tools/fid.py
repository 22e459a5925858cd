"""FID and KID between two sets of images, through torch-fidelity (an optional extra).

torch-fidelity computes the standard Inception features: its InceptionV3 is a port of the
TensorFlow graph that the original FID code used (2015-12-05 weights, TensorFlow's bilinear
resize to 299), so its numbers compare with published ones, and it gives FID and KID from one
pass over each set. Install it with ``pip install 'vdvae-cli[fid]'``. Its Inception weights are
fetched here, on first use, with this package's own downloader into ``<cache>/files/`` (resumable,
with a progress callback, checked against the hash the publisher puts in the file name; offline
with ``HF_HUB_OFFLINE=1`` once there), and handed to torch-fidelity as a path, so it never
downloads anything itself.

Inputs are folders of images (PNG/JPEG, all of one size) or uint8 NHWC tensors (e.g. samples
made on the fly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..base.errors import ImageError, MissingDependencyError

if TYPE_CHECKING:
    import torch

    from ..modelfiles.transfer import ProgressCallback

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_SHA256 = "6726825d"  # the sha256 prefix published in the file name (torch.hub's convention)
FOLDER_SUFFIXES = (".png", ".jpg", ".jpeg")  # what torch-fidelity reads from a folder
KID_SUBSET = 1000  # torch-fidelity's default subset size, lowered for small sets


@dataclass(frozen=True)
class FidResult:
    fid: float
    kid_mean: float
    kid_std: float
    n1: int
    n2: int
    kid_subset_size: int

    def as_dict(self) -> dict[str, Any]:
        return {"fid": self.fid, "kid_mean": self.kid_mean, "kid_std": self.kid_std, "n1": self.n1, "n2": self.n2,
                "kid_subset_size": self.kid_subset_size}


def require_torch_fidelity() -> Any:
    """The torch_fidelity module, or a clear error saying how to install it."""
    try:
        import torch_fidelity
    except ImportError as exc:
        raise MissingDependencyError(
            f"FID and KID need the optional package torch-fidelity ({exc})",
            hint="pip install 'vdvae-cli[fid]' (it brings torchvision, which must match your torch build)",
        ) from None
    return torch_fidelity


def inception_weights(*, progress: "ProgressCallback | None" = None, url: str | None = None,
                      sha256: str | None = None) -> Path:
    """The Inception weights file (default :data:`INCEPTION_URL`), downloaded into our cache on first use."""
    from ..modelfiles.fetch import fetch_checked

    return fetch_checked(url or INCEPTION_URL, sha256 or INCEPTION_SHA256, progress=progress)


def count_folder(path: Path) -> int:
    """How many images torch-fidelity will read from ``path``; raises if none can be."""
    if not path.is_dir():
        raise ImageError(f"{path} is not a folder" if path.exists() else f"no such folder: {path}",
                         hint="FID compares two folders of images, or samples (--model, -n) with a folder")
    n = sum(1 for p in path.iterdir() if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES)
    if n < 2:
        raise ImageError(f"{path} holds {n} PNG/JPEG image{'s' if n != 1 else ''}; FID needs at least 2")
    return n


def _dataset(images: "torch.Tensor") -> Any:
    """uint8 (N, H, W, 3) -> a Dataset of (3, H, W) uint8 tensors, as torch-fidelity reads them."""
    import torch

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return images.shape[0]

        def __getitem__(self, i: int) -> torch.Tensor:
            return images[i].permute(2, 0, 1).contiguous()

    return Images()


def fid_kid(
    input1: "str | Path | torch.Tensor",
    input2: "str | Path | torch.Tensor",
    *,
    weights: str | Path,
    device: str = "cpu",
    batch_size: int = 64,
    kid_subset_size: int | None = None,
    seed: int = 2020,
) -> FidResult:
    """FID and KID (mean, std over subsets) between two image sets, with the Inception weights at
    ``weights`` (see :func:`inception_weights`). Each input is a folder or a uint8 NHWC tensor."""
    import torch

    fidelity = require_torch_fidelity()
    sizes, inputs = [], []
    for x in (input1, input2):
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3 or x.shape[0] < 2:
                raise ValueError("image tensors must be uint8 (N >= 2, H, W, 3)")
            sizes.append(int(x.shape[0]))
            inputs.append(_dataset(x.cpu()))
        else:
            sizes.append(count_folder(Path(x)))
            inputs.append(str(x))
    subset = min(kid_subset_size or KID_SUBSET, *sizes)
    metrics = fidelity.calculate_metrics(
        input1=inputs[0], input2=inputs[1], fid=True, kid=True, kid_subset_size=subset,
        feature_extractor_weights_path=str(weights), cuda=torch.device(device).type == "cuda",
        batch_size=batch_size, cache=False, verbose=False, save_cpu_ram=True, rng_seed=seed,
    )
    return FidResult(float(metrics["frechet_inception_distance"]), float(metrics["kernel_inception_distance_mean"]),
                     float(metrics["kernel_inception_distance_std"]), sizes[0], sizes[1], subset)
