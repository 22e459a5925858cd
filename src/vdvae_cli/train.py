"""Train or fine-tune a VDVAE: the reference recipe as one importable function.

The recipe (openai/vdvae, see the spec's §11): negative ELBO in nats/dim as the loss; AdamW with
decoupled weight decay and betas (0.9, 0.9); linear learning-rate warm-up; gradient-norm clipping,
and an update (optimizer step and EMA update) *skipped* when the pre-clip gradient norm reaches
``skip_threshold`` or the loss is not finite; an exponential moving average (EMA) of the weights,
which is what evaluation, sample grids and the exported model use.

Beyond the reference: the run stops with a clear message when every update has been skipped for
``max_skips`` steps in a row (the trap of openai/vdvae#25, where the gradient norm of a fresh model
sits above the threshold forever); an optional cosine decay; a wall-clock limit; bf16 autocast with
fp32 master weights; and resumable checkpoints that hold everything that decides the next step
(model, EMA, optimizer, step, noise-generator states), so a resumed CPU run continues bit for bit.

A run directory holds::

    run.json            model config, train config, data facts, world size
    state.pt            the latest resumable state (torch.save of plain tensors, loaded weights_only)
    model.safetensors   the EMA weights in the self-describing format ``vdvae sample`` loads
    log.jsonl           one JSON object per evaluation, warning and checkpoint
    samples/step-N.png  held-out originals, their reconstructions, then samples at t = 1.0 and 0.8

Several processes: launch with ``torchrun``; :func:`train` notices an initialised
``torch.distributed`` process group, wraps the loss in DistributedDataParallel, gives each rank its
shard of every epoch, and lets only rank 0 write or report.
"""

from __future__ import annotations

import json
import math
import os
import time
from copy import deepcopy
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .checkpoint import save_checkpoint
from .config import VDVAEConfig
from .data import ShardedBatches, holdout_split, shard_range
from .distributions import BatchNoise
from .errors import OutputError, TrainingError, UsageError
from .model import VAE
from .ops import elbo, reconstruct, sample

Tensor = torch.Tensor
Callback = Callable[[dict[str, Any]], None]

LN2 = math.log(2.0)
STATE_FILE = "state.pt"
RUN_FILE = "run.json"
MODEL_FILE = "model.safetensors"
LOG_FILE = "log.jsonl"

# --------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything about a run except the network. Defaults are the reference's (hps.py): the
    argparse defaults, with the named sets' shared ``wd=0.01`` and ``warmup_iters=100``."""

    lr: float = 1.5e-4
    wd: float = 0.01
    betas: tuple[float, float] = (0.9, 0.9)
    adam_eps: float = 1e-8
    warmup: int = 100  # steps of linear warm-up from lr/warmup to lr
    lr_schedule: str = "constant"  # "constant" (reference) or "cosine" (decay to lr * lr_final after warm-up)
    lr_final: float = 0.1
    grad_clip: float = 200.0
    skip_threshold: float = 400.0  # skip the update when grad norm >= this; -1 never skips on size
    max_skips: int = 100  # stop when this many updates in a row were skipped
    ema_rate: float = 0.999
    batch_size: int = 32  # per process
    steps: int | None = None  # total optimizer steps (counting skipped ones); or give epochs
    epochs: int | None = None
    eval_every: int | None = None  # steps; None = once per epoch
    sample_every: int | None = None  # steps; None = with every evaluation
    ckpt_every: int | None = None  # steps; None = with every evaluation
    keep_every: int | None = None  # also keep step-N.pt copies at this interval
    holdout: float = 0.1  # fraction (< 1) or count of images held out for evaluation
    eval_batch_size: int = 64
    max_eval: int | None = None  # evaluate on at most this many held-out images
    grid_columns: int = 8
    seed: int = 0  # initialisation, data order and training noise
    split_seed: int = 0  # the held-out split (kept apart so a new seed keeps the same split)
    dtype: str = "fp32"  # "fp32" or "bf16" (autocast; fp32 master weights and loss maths)
    time_limit: float | None = None  # seconds; checkpoint and stop (resumable) when exceeded
    # Curriculum: for the first coarse_steps steps only latent layers at resolution <= coarse_res are
    # inferred (the rest come from the prior), so coarse layers learn to carry the global content
    # before finer layers can take it over locally. 0 = off (the reference recipe).
    coarse_res: int | None = None
    coarse_steps: int = 0
    # Against posterior collapse (both 0 = off, the reference recipe). They change the objective the
    # gradient follows, never the reported loss (always the negative ELBO). kl_warmup: the KL term's
    # weight rises linearly from 0 to 1 over this many steps (Bowman et al. 2016; Sonderby et al.
    # 2016). free_bits: each latent layer's batch-mean KL counts as at least this many bits per
    # image, so a layer below the floor is not pushed further towards the prior (Kingma et al. 2016).
    kl_warmup: int = 0
    free_bits: float = 0.0

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise UsageError("give exactly one of steps or epochs")
        for name in ("steps", "epochs", "eval_every", "sample_every", "ckpt_every", "keep_every", "max_eval"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise UsageError(f"{name} must be a positive whole number, got {v!r}")
        if self.lr <= 0 or self.wd < 0 or self.grad_clip <= 0:
            raise UsageError("lr and grad_clip must be > 0 and wd >= 0")
        if not (0 <= self.betas[0] < 1 and 0 <= self.betas[1] < 1):
            raise UsageError(f"betas must lie in [0, 1), got {self.betas}")
        if not 0 <= self.ema_rate < 1:
            raise UsageError(f"ema_rate must lie in [0, 1), got {self.ema_rate}")
        if self.skip_threshold != -1 and self.skip_threshold <= 0:
            raise UsageError("skip_threshold must be > 0, or -1 to turn size-based skipping off")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UsageError(f"lr_schedule must be 'constant' or 'cosine', got {self.lr_schedule!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise UsageError(
                f"training dtype {self.dtype!r} is not supported",
                hint="use fp32, or bf16 (autocast with fp32 master weights); fp16 would need loss scaling",
            )
        if self.batch_size < 1 or self.eval_batch_size < 1 or self.warmup < 0 or self.max_skips < 1:
            raise UsageError("batch sizes and max_skips must be >= 1 and warmup >= 0")
        if self.holdout <= 0:
            raise UsageError("a held-out split is required (holdout > 0)")
        if self.coarse_steps < 0 or (self.coarse_steps > 0 and self.coarse_res is None):
            raise UsageError("coarse_steps needs coarse_res (the highest resolution inferred meanwhile)")
        if self.kl_warmup < 0 or not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise UsageError("kl_warmup must be >= 0 steps and free_bits a finite number >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


# Per official set: lr, grad_clip, skip_threshold, ema_rate, per-GPU batch (spec §1).
_REFERENCE_RECIPES: dict[str, dict[str, Any]] = {
    "cifar10": dict(lr=2e-4, grad_clip=200.0, skip_threshold=400.0, ema_rate=0.9999, batch_size=16),
    "imagenet32": dict(lr=1.5e-4, grad_clip=200.0, skip_threshold=300.0, ema_rate=0.999, batch_size=8),
    "imagenet64": dict(lr=1.5e-4, grad_clip=220.0, skip_threshold=380.0, ema_rate=0.999, batch_size=4),
    "ffhq256": dict(lr=1.5e-4, grad_clip=130.0, skip_threshold=180.0, ema_rate=0.999, batch_size=1),
    "ffhq1024": dict(lr=7e-5, grad_clip=360.0, skip_threshold=500.0, ema_rate=0.999, batch_size=1),
}


def reference_recipe(name: str) -> dict[str, Any]:
    """The training settings of an official hyperparameter set (empty for any other name)."""
    return dict(_REFERENCE_RECIPES.get(name, {}))


def lr_at(tc: TrainConfig, step: int, total: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up, then constant or cosine."""
    scale = min(1.0, (step + 1) / tc.warmup) if tc.warmup else 1.0
    if tc.lr_schedule == "cosine" and step >= tc.warmup:
        progress = min(1.0, (step - tc.warmup) / max(1, total - tc.warmup))
        scale = tc.lr_final + (1.0 - tc.lr_final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return tc.lr * scale


def kl_weight(tc: TrainConfig, step: int) -> float:
    """Weight of the KL term in the objective at step ``step`` (0-based): 1 without KL warm-up."""
    return min(1.0, (step + 1) / tc.kl_warmup) if tc.kl_warmup else 1.0


def objective(tc: TrainConfig, step: int, distortion: Tensor, kl_per_layer: Tensor, n_dims: int) -> Tensor:
    """The scalar the gradient follows: the mean negative ELBO (nats/dim), its KL term weighted by
    :func:`kl_weight` and each layer's batch-mean KL floored at ``free_bits`` bits per image."""
    kl = kl_per_layer.mean(0)  # (L,) nats/dim
    if tc.free_bits:
        kl = kl.clamp(min=tc.free_bits * LN2 / n_dims)
    return distortion.mean() + kl_weight(tc, step) * kl.sum()


# --------------------------------------------------------------------------------------------------
# Pieces


class ElboLoss(nn.Module):
    """Wraps a VAE so that one ``forward`` computes the per-image negative ELBO terms.

    DistributedDataParallel synchronises gradients of whatever runs inside ``forward``, so the
    training pass goes through this module rather than calling ``model.encoder``/``decoder``.
    """

    def __init__(self, model: VAE):
        super().__init__()
        self.model = model
        self.noise: BatchNoise | None = None
        self.n_posterior: int | None = None  # None: every layer inferred

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # images (N, H, W, C) uint8
        out = elbo(self.model, images, noise=self.noise, grad=True, n_posterior=self.n_posterior)
        return out.distortion, out.rate, out.kl_per_layer  # (N,), (N,), (N, L) nats/dim, float32


@dataclass
class TrainResult:
    step: int
    heldout_bpd: float | None
    model_path: Path | None
    stopped: str  # "done", "time limit"
    skipped: int
    elapsed_s: float
    history: list[dict[str, Any]]
    model: VAE  # the trained (non-EMA) network, in train mode
    ema: VAE  # the EMA network: what evaluation, grids and the exported file use


def _dist() -> tuple[bool, int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def _unused_encoder_blocks(cfg: VDVAEConfig) -> bool:
    """Whether some encoder blocks feed no decoder resolution (DDP must then look for unused params)."""
    used = set(cfg.resolutions)
    last_needed = max((i for i, layer in enumerate(cfg.encoder_layers) if layer.out_res in used), default=-1)
    return last_needed < len(cfg.encoder_layers) - 1


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _append_log(run_dir: Path, record: Mapping[str, Any]) -> None:
    with open(run_dir / LOG_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def save_grid(images: Tensor, path: Path, columns: int) -> Path:
    """Write uint8 NHWC ``images`` as one PNG grid (1-pixel grey gaps), atomically."""
    import numpy as np
    from PIL import Image

    n, h, w, c = images.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 128, dtype=np.uint8)
    for i, img in enumerate(images.cpu().numpy()):
        r, col = divmod(i, columns)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w] = img
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(canvas).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def evaluate_heldout(
    model: VAE, images: Tensor, *, batch_size: int = 64, seed: int = 0, autocast: bool = False
) -> dict[str, float]:
    """Mean negative ELBO of ``images`` in bits/dim (with its distortion/rate split), summed over
    this process's part when ``torch.distributed`` is initialised and reduced over all ranks."""
    distributed, rank, world = _dist()
    part = images[shard_range(len(images), rank, world)] if distributed else images
    p = model.decoder.gain
    g = torch.Generator(device=p.device).manual_seed(seed)
    n_layers = model.cfg.n_layers
    sums = torch.zeros(4 + n_layers, dtype=torch.float64, device=p.device)  # elbo, distortion, rate, count, KL per layer
    for start in range(0, len(part), batch_size):
        batch = part[start : start + batch_size]
        with torch.autocast(p.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = elbo(model, batch, noise=g)
        d, r = out.distortion.double(), out.rate.double()
        sums += torch.cat([torch.stack([(d + r).sum(), d.sum(), r.sum(), d.new_tensor(float(len(batch)))]),
                           out.kl_per_layer.double().sum(0)])
    if distributed:
        import torch.distributed as dist

        dist.all_reduce(sums)
    count = max(float(sums[3]), 1.0)
    return {
        "heldout_bpd": float(sums[0]) / count / LN2,
        "distortion_bpd": float(sums[1]) / count / LN2,
        "rate_bpd": float(sums[2]) / count / LN2,
        "heldout_images": int(sums[3]),
        # each latent layer's KL in bits per image: a layer near 0 carries nothing (collapse)
        "layer_bits": [round(float(v) / count / LN2 * model.cfg.n_dims, 2) for v in sums[4:]],
    }


def visualise(model: VAE, heldout: Tensor, path: Path, *, columns: int, seed: int) -> Path:
    """The reference-style grid: originals, posterior-mean reconstructions, samples at t=1 and t=0.8."""
    g = torch.Generator(device=model.decoder.gain.device)
    originals = heldout[:columns]
    recon = reconstruct(model, originals, posterior="mean", noise=g.manual_seed(seed))
    rows = [originals.to(recon.device), recon]
    for t in (1.0, 0.8):
        rows.append(sample(model, 2 * columns, temperatures=t, noise=g.manual_seed(seed + 1)))
    return save_grid(torch.cat(rows), path, columns)


# --------------------------------------------------------------------------------------------------
# The loop


def read_run(run_dir: str | Path) -> tuple[VDVAEConfig, TrainConfig, dict[str, Any]]:
    """The model config, train config and run facts saved in ``run_dir/run.json``."""
    run_dir = Path(run_dir)
    try:
        info = json.loads((run_dir / RUN_FILE).read_text())
        return VDVAEConfig.from_dict(info["model_config"]), TrainConfig.from_dict(info["train_config"]), info
    except FileNotFoundError:
        raise TrainingError(f"{run_dir} is not a training run (no {RUN_FILE})") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TrainingError(f"{run_dir / RUN_FILE} is damaged: {exc}") from None


def train(
    model_cfg: VDVAEConfig,
    tc: TrainConfig,
    images: Tensor,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    init_state: Mapping[str, Tensor] | None = None,
    resume: bool = False,
    force: bool = False,
    data_info: Mapping[str, Any] | None = None,
    callback: Callback | None = None,
) -> TrainResult:
    """Train ``model_cfg`` on ``images`` (uint8 NHWC, the whole data set; the held-out split is
    drawn here) and write the run to ``run_dir``.

    ``init_state`` starts from given weights (fine-tuning); ``resume=True`` continues the run saved
    in ``run_dir`` exactly where its last checkpoint left it (``tc`` may extend ``steps``/``epochs``).
    ``callback`` receives event dicts (``event`` = start, step, eval, samples, checkpoint, warning,
    done) on rank 0 only.
    """
    run_dir = Path(run_dir)
    device = torch.device(device)
    distributed, rank, world = _dist()
    emit: Callback = callback if (callback is not None and rank == 0) else (lambda e: None)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise TrainingError(f"training images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    if images.shape[1] != model_cfg.image_size or images.shape[2] != model_cfg.image_size:
        raise TrainingError(
            f"images are {images.shape[2]}x{images.shape[1]} but the model is {model_cfg.image_size}x{model_cfg.image_size}"
        )
    coarse_layers = None  # the coarse-first curriculum: how many leading layers it infers
    if tc.coarse_steps:
        if tc.coarse_res not in model_cfg.resolutions:
            raise UsageError(f"coarse resolution {tc.coarse_res} is not a resolution of this model",
                             hint=f"choose one of {', '.join(map(str, model_cfg.resolutions))}")
        coarse_layers = model_cfg.layers_up_to_res(tc.coarse_res)
    if tc.dtype == "bf16" and device.type == "cpu":
        emit({"event": "warning", "message": "bf16 autocast on CPU is usually slower than fp32"})

    # -- data ------------------------------------------------------------------------------------
    train_idx, held_idx = holdout_split(len(images), tc.holdout, tc.split_seed)
    train_images, heldout = images[train_idx], images[held_idx]
    if tc.max_eval:
        heldout = heldout[: tc.max_eval]
    batches = ShardedBatches(len(train_images), tc.batch_size, tc.seed, rank, world)
    spe = batches.steps_per_epoch
    total = tc.steps if tc.steps is not None else tc.epochs * spe  # type: ignore[operator]
    eval_every = tc.eval_every or spe
    sample_every = tc.sample_every or eval_every
    ckpt_every = tc.ckpt_every or eval_every

    # -- run directory ---------------------------------------------------------------------------
    # Every rank checks (so all fail alike, before any collective); only rank 0 then writes.
    state_path = run_dir / STATE_FILE
    saved: dict[str, Any] | None = None
    if resume:
        if not state_path.is_file():
            raise TrainingError(f"{run_dir} has no checkpoint to resume ({STATE_FILE} is missing)")
        try:
            saved = torch.load(state_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a truncated or foreign file
            raise TrainingError(f"{state_path} cannot be read: {exc}") from None
        if saved.get("world_size", 1) != world:
            raise TrainingError(
                f"the run was saved with {saved.get('world_size', 1)} process(es) but now runs with {world}",
                hint="resume with the same number of processes so every rank sees the same data order",
            )
    else:
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputError(f"{run_dir} exists and is not a folder")
        if (state_path.exists() or (run_dir / RUN_FILE).exists()) and not force:
            raise OutputError(
                f"{run_dir} already holds a training run",
                hint=f"continue it with --resume {run_dir}, choose another -o, or pass --force to start over",
            )
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=True)
            if force:  # start over: nothing of the old run may be mistaken for this one's
                for name in (LOG_FILE, STATE_FILE, MODEL_FILE):
                    (run_dir / name).unlink(missing_ok=True)
        info = {
            "model_config": model_cfg.to_dict(),
            "train_config": tc.to_dict(),
            "data": dict(data_info or {}),
            "n_images": len(images),
            "n_train": len(train_images),
            "n_heldout": len(heldout),
            "world_size": world,
            "steps_total": total,
            "steps_per_epoch": spe,
        }
        tmp = run_dir / f".{RUN_FILE}.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, run_dir / RUN_FILE)

    # -- model, EMA, optimizer -------------------------------------------------------------------
    with torch.random.fork_rng(devices=[]):  # the constructor's default init draws from the global RNG
        torch.manual_seed(tc.seed)
        model = VAE(model_cfg)
    if init_state is not None:
        model.load_state_dict(init_state, strict=True)
    model.to(device).train()
    ema = deepcopy(model).eval().requires_grad_(False)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=tc.lr, betas=tc.betas, eps=tc.adam_eps, weight_decay=tc.wd)
    noise_gen = torch.Generator(device=device).manual_seed(tc.seed * 1_000_003 + rank)
    step, skipped, history = 0, 0, []
    if saved is not None:
        state = saved
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        step, skipped = int(state["step"]), int(state["skipped"])
        noise_gen.set_state(state["rng"][rank])
        history = [json.loads(h) for h in state.get("history", [])]

    loss_fn: nn.Module = ElboLoss(model)
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        loss_fn = DistributedDataParallel(
            loss_fn,
            device_ids=[device.index or 0] if device.type == "cuda" else None,
            # the coarse-first phase leaves the fine layers' posterior blocks without gradients
            find_unused_parameters=_unused_encoder_blocks(model_cfg) or tc.coarse_steps > 0,
        )
    inner = loss_fn.module if distributed else loss_fn
    inner.noise = BatchNoise(noise_gen)  # type: ignore[union-attr]
    autocast = tc.dtype == "bf16"

    def checkpoint(kind: str) -> None:
        rng = [noise_gen.get_state()]
        if distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, noise_gen.get_state())
            rng = gathered
        if rank != 0:
            return
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "skipped": skipped,
            "rng": rng,
            "world_size": world,
            "history": [json.dumps(h) for h in history],
            "elapsed_s": elapsed(),
        }
        _atomic_torch_save(state, state_path)
        if tc.keep_every and step % tc.keep_every == 0:
            _atomic_torch_save(state, run_dir / f"step-{step:07d}.pt")
        last = history[-1] if history else {}
        meta = {
            "dataset": str((data_info or {}).get("dataset", "custom")),
            "train_steps": str(step),
            "train_images": str(len(train_images)),
            "heldout_images": str(len(heldout)),
            "heldout_bpd": f"{last['heldout_bpd']:.4f}" if "heldout_bpd" in last else "",
            "ema_rate": str(tc.ema_rate),
            "seed": str(tc.seed),
            "trainer": "vdvae train",
        }
        save_checkpoint(ema, model_cfg, run_dir / MODEL_FILE, metadata=meta, force=True)
        _append_log(run_dir, {"event": "checkpoint", "step": step, "kind": kind})
        emit({"event": "checkpoint", "step": step, "path": str(state_path), "model": str(run_dir / MODEL_FILE)})

    def run_eval() -> dict[str, Any]:
        stats = evaluate_heldout(ema, heldout, batch_size=tc.eval_batch_size, seed=tc.seed, autocast=autocast)
        n_done = max(1, window["n"])
        record = {
            "event": "eval",
            "step": step,
            "epoch": round(step / spe, 3),
            **{k: round(v, 5) if isinstance(v, float) else v for k, v in stats.items()},
            "train_bpd": round(window["loss"] / n_done / LN2, 5) if window["n"] else None,
            "grad_norm": round(window["gnorm"] / n_done, 3) if window["n"] else None,
            "lr": lr_at(tc, max(0, step - 1), total),
            "skipped": skipped,
            "elapsed_s": round(elapsed(), 1),
        }
        window.update(loss=0.0, gnorm=0.0, n=0)
        history.append(record)
        if rank == 0:
            _append_log(run_dir, record)
        emit(record)
        return record

    start_time = time.monotonic()
    elapsed_before = float(saved["elapsed_s"]) if saved is not None else 0.0

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - start_time

    window = {"loss": 0.0, "gnorm": 0.0, "n": 0}
    consecutive = 0
    stopped = "done"
    emit({"event": "start", "step": step, "total": total, "steps_per_epoch": spe, "n_train": len(train_images),
          "n_heldout": len(heldout), "world_size": world, "params": sum(p.numel() for p in params)})
    while step < total:
        idx = batches.indices(step)
        batch = train_images[idx].to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(tc, step, total)
        inner.n_posterior = coarse_layers if step < tc.coarse_steps else None  # type: ignore[union-attr]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            distortion, rate, kl_layers = loss_fn(batch)
        loss = (distortion + rate).mean()  # the negative ELBO: what is reported
        if tc.kl_warmup or tc.free_bits:
            objective(tc, step, distortion, kl_layers, model_cfg.n_dims).backward()
        else:
            loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
        over_time = float(tc.time_limit is not None and elapsed() >= tc.time_limit)
        stats = torch.stack([loss.detach().float(), distortion.detach().mean(), rate.detach().mean(),
                             loss.new_tensor(over_time)])
        if distributed:  # one collective: mean losses, and stop together if any rank ran out of time
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats[:3] /= world
        loss_v, dist_v, rate_v, over_time = (float(s) for s in stats)
        finite = math.isfinite(loss_v) and math.isfinite(grad_norm)
        skip = not finite or (tc.skip_threshold != -1 and grad_norm >= tc.skip_threshold)
        if skip:
            skipped += 1
            consecutive += 1
            why = "non-finite loss" if not finite else f"grad norm {grad_norm:.1f} >= {tc.skip_threshold:g}"
            if consecutive in (1, 10) or consecutive % 50 == 0:
                msg = f"step {step}: update skipped ({why}); {consecutive} in a row, {skipped} in all"
                if rank == 0:
                    _append_log(run_dir, {"event": "warning", "step": step, "message": msg})
                emit({"event": "warning", "step": step, "message": msg})
            if consecutive >= tc.max_skips:
                raise TrainingError(
                    f"the last {consecutive} updates were all skipped ({why}): the model is not learning",
                    hint="raise --skip-threshold (or -1 to skip only non-finite steps), lower --lr, "
                    "or raise --grad-clip (see openai/vdvae#25)",
                )
        else:
            consecutive = 0
            opt.step()
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), params):
                    pe.lerp_(p, 1.0 - tc.ema_rate)
            window["loss"] += loss_v
            window["gnorm"] += grad_norm
            window["n"] += 1
        opt.zero_grad(set_to_none=True)
        step += 1
        emit({"event": "step", "step": step, "total": total, "loss_bpd": loss_v / LN2, "distortion_bpd": dist_v / LN2,
              "rate_bpd": rate_v / LN2, "grad_norm": grad_norm, "skipped": skip})
        final = step >= total
        if step % eval_every == 0 or final:
            run_eval()
        if rank == 0 and (step % sample_every == 0 or final):
            path = visualise(ema, heldout, run_dir / "samples" / f"step-{step:07d}.png",
                             columns=tc.grid_columns, seed=tc.seed)
            emit({"event": "samples", "step": step, "path": str(path)})
        if step % ckpt_every == 0 or final:
            checkpoint("periodic" if not final else "final")
        if over_time and not final:
            if not history or history[-1]["step"] != step:
                run_eval()
            checkpoint("time limit")
            stopped = "time limit"
            break

    last_bpd = history[-1]["heldout_bpd"] if history else None
    result = TrainResult(step, last_bpd, run_dir / MODEL_FILE if rank == 0 else None, stopped, skipped, elapsed(),
                         history, model, ema)
    emit({"event": "done", "step": step, "stopped": stopped, "heldout_bpd": last_bpd, "skipped": skipped,
          "elapsed_s": round(elapsed(), 1), "model": str(run_dir / MODEL_FILE)})
    return result
