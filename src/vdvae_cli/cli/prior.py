"""``vdvae prior fit``: a learned prior over a trained VAE's top latent layers (a second stage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..base.errors import OutputError, UsageError
from ._app import app, command
from ._run import Session
from .options import DeviceOpt, JsonOpt, QuietOpt

prior_app = typer.Typer(
    name="prior", no_args_is_help=True, context_settings={"help_option_names": ["-h", "--help"]},
    help="Learned priors over a VAE's top latent layers: `vdvae prior fit MODEL IMAGES` fits one, and sample, "
    "reconstruct, mix, decode and eval use it (--prior learned|model).",
)
app.add_typer(prior_app)


@command(
    "fit", group=prior_app,
    help=(
        "Fit an autoregressive prior to the posterior of MODEL's top latent layers on IMAGES, and write it as a "
        "companion file that names the model's fingerprint: a MADE (a mixture of Gaussians per dimension) over 1x1 "
        "layers, PixelCNN++ blocks over a spatial top layer (--kind). Or store --exemplars of IMAGES as an exemplar "
        "prior (--kind exemplar): a draw takes the covered layers from the model's posterior of one stored image "
        "(the Exemplar VAE; nothing to train, no density, so likelihoods use the model's own prior).\n\n"
        "By default every leading 1x1 layer is covered, else the top layer (printed), and the file is MODEL.prior.safetensors beside "
        "a local model file, which every command then finds by itself (--prior model turns it off). Progress on "
        "stderr, one JSON line per evaluation with --json; resumable (--resume) and time-limited like train."
    ),
    epilog="Examples:\n\n"
    "  vdvae prior fit runs/fashion/model.safetensors fashion/train.npz --time-limit 20\n\n"
    "  vdvae prior fit runs/fashion/model.safetensors fashion/train.npz --resume --steps 20000\n\n"
    "  vdvae prior fit runs/fashion/model.safetensors fashion/train.npz --kind exemplar --layers 9 --exemplars 4000\n\n"
    "  vdvae sample --model runs/fashion/model.safetensors -n 16 --grid -o with-prior.png",
)
def fit(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="The VAE (a file, or a registry name with -o).")],
    data: Annotated[str, typer.Argument(metavar="IMAGES", help="Folder of images, or an .npy/.npz uint8 array.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", metavar="PATH", help="The prior file [MODEL.prior.safetensors beside a model file].", show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option("--layers", metavar="K", help="How many top latent layers [every leading 1x1 layer, else the top layer].", show_default=False)] = None,
    kind: Annotated[str, typer.Option("--kind", metavar="auto|made|spatial|exemplar", help="made: a MADE over the layers flattened (up to 2,048 dims); spatial: PixelCNN++ blocks over one spatial layer's map, channel by channel inside a position; exemplar: --exemplars of IMAGES, each drawn through the model's posterior (any leading layers). auto: made for 1x1 layers, spatial for a spatial top layer.")] = "auto",
    exemplars: Annotated[int, typer.Option("--exemplars", metavar="N", help="Exemplar prior: how many of IMAGES it stores, picked at random by --seed (all when fewer).")] = 4000,
    hidden: Annotated[Optional[str], typer.Option("--hidden", metavar="W,W", help="Hidden widths of the MADE network [two of max(256, 2 x dims), at most 1024]; spatial: the channel network's one width [max(64, 8 x channels)].", show_default=False)] = None,
    filters: Annotated[int, typer.Option("--filters", help="Spatial prior: width of the causal streams.")] = 64,
    blocks: Annotated[int, typer.Option("--blocks", help="Spatial prior: gated ResNet blocks per stream.")] = 4,
    components: Annotated[int, typer.Option("--components", help="Gaussians per dimension.")] = 4,
    draws: Annotated[int, typer.Option("--draws", help="Posterior samples per training image.")] = 2,
    steps: Annotated[int, typer.Option("--steps", help="Total optimizer steps.")] = 5000,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Latent draws per step.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Adam's learning rate.")] = 1e-3,
    time_limit: Annotated[Optional[float], typer.Option("--time-limit", metavar="MIN", help="Stop cleanly (resumable) after this many minutes.", show_default=False)] = None,
    holdout: Annotated[Optional[int], typer.Option("--holdout", metavar="N", help="Images held out for the report [1000]. Exemplar prior: leave out the images `vdvae train --holdout N` held out (its split, seed 0), so only what the model trained on is stored [none left out].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="The split, the draws and the initialisation.")] = 0,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the fit whose state is beside the output.")] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing prior file and fit state.")] = False,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from ..engine.keys import model_fingerprint
    from ..engine.companion import companion_path
    from ..engine.statedict import digest_of
    from ..training.data import load_images
    from ..engine.learned_prior import check_layers, default_kind, default_layers
    from ..training.prior_fit import PriorFitConfig, fit as fit_prior, state_paths

    widths: tuple[int, ...] = ()
    if hidden is not None:
        try:
            widths = tuple(int(w) for w in hidden.split(","))
        except ValueError:
            raise UsageError(f"--hidden {hidden!r} is not a list of widths such as 512,512") from None
        if not widths or len(widths) > 8 or any(not 1 <= w <= 8192 for w in widths):
            raise UsageError(f"--hidden {hidden!r}: one to eight widths, each 1 to 8192")
    if not 1 <= components <= 64:
        raise UsageError(f"--components must be 1 to 64, got {components}")
    if time_limit is not None and not (time_limit > 0):
        raise UsageError(f"--time-limit must be a number of minutes > 0, got {time_limit:g}")
    if output is not None and not Path(output).parent.is_dir():
        raise OutputError(f"cannot write {output}: folder {Path(output).parent} does not exist")
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, "fp32")
    if output is None:
        if run.model_source != "file" or run.model_path is None:
            raise UsageError(f"model {vae.cfg.name} is not a local file, so there is no folder of yours to put its prior in",
                             hint="give -o PATH.prior.safetensors (and --prior PATH when you use it)")
        out = companion_path(run.model_path)
    else:
        out = Path(output)
    state_path, _ = state_paths(out)
    if kind not in ("auto", "made", "spatial", "exemplar"):
        raise UsageError(f"--kind {kind!r} is not auto, made, spatial or exemplar")
    if kind == "exemplar":
        if resume:
            raise UsageError("an exemplar prior is not trained, so there is no fit to resume", hint="drop --resume")
        if layers is None:
            raise UsageError("--kind exemplar needs --layers K: how many top layers its exemplars give")
        if not 1 <= exemplars <= 1 << 20:
            raise UsageError(f"--exemplars must be 1 to {1 << 20:,}, got {exemplars}")
    if not resume and not force and (out.exists() or state_path.exists()):
        raise OutputError(f"{out if out.exists() else state_path} exists", hint="--resume continues that fit, --force starts over")
    k = layers if layers is not None else default_layers(vae.cfg.latent_shapes)
    if kind == "spatial" and layers is None:
        k = 1
    chosen = default_kind(max(k, 1), vae.cfg.latent_shapes) if kind == "auto" else kind
    check_layers(max(k, 1), vae.cfg.latent_shapes, chosen)  # one line naming the largest K (or why none)
    if chosen == "exemplar":
        _store_exemplars(run, vae, data, out, k, exemplars, seed, holdout or 0, force, json_out)
        return
    fc = PriorFitConfig(layers=k, kind=chosen, hidden=widths, filters=filters, blocks=blocks, components=components, draws=draws, batch_size=batch_size, lr=lr,
                        steps=steps, time_limit=None if time_limit is None else time_limit * 60, holdout=1000 if holdout is None else holdout,
                        seed=seed)
    images = load_images(data, vae.cfg.image_size, skipped=lambda line: run.info(line))
    run.announce()
    shapes = ", ".join("x".join(map(str, s)) for s in vae.cfg.latent_shapes[:k])
    run.info(f"covering latent layers 0-{k - 1} ({shapes})"
             + (" (the default: every leading 1x1 layer, else the top one; --layers K to choose)" if layers is None else ""))

    def progress(total: int, label: str):
        return run.progress(total, label)

    result = fit_prior(vae, images, out, fc, fingerprint=model_fingerprint(vae.cfg, digest_of(vae)), resume=resume,
                       emit=lambda rec: run.emit(rec) if json_out else None, info=run.info, progress=progress)
    run.info(f"{result['stopped']} at step {result['steps']}; kept step {result['step']}: held-out top-layer rate {result['rate_learned_prior_bits']:.2f} "
             f"bits per image with the learned prior against {result['rate_model_prior_bits']:.2f} with the model's "
             f"({result['saved_bits_per_image']:+.2f} saved); wrote {out}")
    if json_out:
        run.emit({"type": "summary", **result})


def _store_exemplars(run: Session, vae, data: str, out: Path, layers: int, count: int, seed: int, holdout: int,
                     force: bool, json_out: bool) -> None:
    """``--kind exemplar``: store ``count`` of the images as an exemplar prior (nothing to train),
    leaving out the trainer's held-out split of ``holdout`` images when asked."""
    from ..engine.keys import model_fingerprint
    from ..engine.recipe import TrainConfig
    from ..engine.statedict import digest_of
    from ..training.data import holdout_split, load_images
    from ..training.prior_fit import fit_exemplar

    images = load_images(data, vae.cfg.image_size, skipped=lambda line: run.info(line))
    if holdout:
        if not 0 < holdout < len(images):
            raise UsageError(f"--holdout {holdout} leaves no images of {len(images):,} to store")
        kept, _ = holdout_split(len(images), holdout, TrainConfig.split_seed)
        images = images.index_select(0, kept)
        run.info(f"leaving out the {holdout:,} images vdvae train --holdout {holdout} holds out: storing from {len(images):,}")
    run.announce()
    result = fit_exemplar(vae, images, out, layers=layers, count=count, seed=seed,
                          fingerprint=model_fingerprint(vae.cfg, digest_of(vae)), force=force)
    run.info(f"stored {result['exemplars']:,} of {result['of_images']:,} images as an exemplar prior over latent layers "
             f"0-{layers - 1} ({result['bytes']:,} bytes; a draw takes {result['covered_rate_bits_per_image']:.1f} bits "
             f"per image from its exemplar on average); wrote {out}")
    if json_out:
        run.emit({"type": "summary", **result})
