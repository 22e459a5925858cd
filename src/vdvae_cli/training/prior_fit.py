"""Fitting a learned prior (:mod:`vdvae_cli.engine.learned_prior`) to the posterior of a trained VAE
over its top latent layers, the second stage of a two-stage VAE.

What it fits: the *aggregate* posterior of the first K layers, ``q(z) = mean over x of q(z | x)``,
the distribution a prior must match for samples to look like reconstructions. Each training image
gives ``draws`` posterior samples of its top K layers (drawn in order, each layer's given the ones
before: the decoder's own posterior), encoded once before the fit; the prior is fitted to them by
maximum likelihood (Adam). Posterior samples rather than means, as two-stage VAEs fit the aggregate
posterior and a mean alone would under-state its spread.

What it keeps: the prior at the evaluation with the best held-out rate (early stopping: a prior this
size over-fits a few thousand draws within a few hundred steps).

What it reports: on held-out images, one posterior sample each, the top layers' rate
``log q(z | x) - log p(z)`` in bits per image under the model's own prior and under the learned one:
the amount by which the learned prior shortens the ELBO of those images. ``vdvae eval --prior``
measures the same on any images.

Resumable like ``vdvae train``: ``OUT.state.pt`` (the prior, the optimizer, the step, the random
state, the history) and ``OUT.latents.pt`` (the encoded samples) sit beside the output, written
atomically; ``--resume`` continues, ``--time-limit`` stops cleanly with both written.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..base.errors import TrainingError, UsageError
from ..engine.distributions import BatchNoise
from ..engine.interface import LatentModel, first_parameter
from ..engine.learned_prior import LatentPrior, MadeConfig, MadePrior, check_layers, prior_bytes

Tensor = torch.Tensor
LN2 = math.log(2.0)


@dataclass(frozen=True)
class PriorFitConfig:
    layers: int
    kind: str = "made"  # "made" (any leading layers, flattened) or "spatial" (one spatial layer)
    hidden: tuple[int, ...] = ()  # MADE: () = two layers of max(256, 2 x dims), at most 1024; spatial: one width
    filters: int = 64  # spatial: the causal streams' width
    blocks: int = 4  # spatial: gated ResNet pairs
    components: int = 4
    draws: int = 2  # posterior samples per training image
    batch_size: int = 256
    lr: float = 1e-3
    steps: int = 5000
    time_limit: float | None = None  # seconds of this call
    holdout: int = 1000  # images held out for the report
    eval_every: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "filters", "blocks", "components", "draws", "batch_size", "steps", "holdout", "eval_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise UsageError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.kind not in ("made", "spatial"):
            raise UsageError(f"the prior's kind must be made or spatial, got {self.kind!r}")
        if self.kind == "spatial" and len(self.hidden) > 1:
            raise UsageError("the spatial prior's channel network has one hidden width (--hidden W)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UsageError(f"the learning rate must be a finite number > 0, got {self.lr!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise UsageError(f"the time limit must be > 0, got {self.time_limit!r}")


def state_paths(out: Path) -> tuple[Path, Path]:
    return out.with_name(out.name + ".state.pt"), out.with_name(out.name + ".latents.pt")


@torch.inference_mode()
def encode_top(model: LatentModel, images: Tensor, layers: int, draws: int, seed: int, *, batch: int = 64,
               trace: bool = False, progress: Callable[[int], None] | None = None) -> dict[str, Tensor]:
    """``draws`` posterior samples of the first ``layers`` layers per image, flattened: ``z`` (N*draws,
    D). With ``trace`` (held-out images, one draw): also ``log_q`` and ``log_p_model`` (N,) nats."""
    from ..engine.learned_prior import posterior_log_densities
    from ..engine.registry import family_of

    p = first_parameter(model)
    family = family_of(model)
    noise = BatchNoise(torch.Generator(device="cpu").manual_seed(seed))
    zs, log_q, log_p = [], [], []
    for start in range(0, len(images), batch):
        x = images[start : start + batch].to(p.device)
        acts = model.encoder(family.model_input(model, x, p.dtype))
        for _ in range(draws):
            out = model.decoder(len(x), acts, noise=noise, want_latents=True, trace=trace, stop_after=layers)
            zs.append(torch.cat([z.float().reshape(len(x), -1) for z in out.latents], 1).cpu())
            if trace:
                dens = [posterior_log_densities(t) for t in out.trace[:layers]]
                log_q.append(torch.stack([q for q, _ in dens]).sum(0).cpu())
                log_p.append(torch.stack([p for _, p in dens]).sum(0).cpu())
        if progress is not None:
            progress(len(x))
    out_: dict[str, Tensor] = {"z": torch.cat(zs)}
    if trace:
        out_.update(log_q=torch.cat(log_q), log_p_model=torch.cat(log_p))
    return out_


def heldout_report(prior: LatentPrior, held: dict[str, Tensor]) -> dict[str, float]:
    """Top layers' rate on the held-out draws, bits per image: under the model's prior and the learned one."""
    with torch.no_grad():
        learned = prior.log_prob(held["z"]).double()
    rate_model = float((held["log_q"].double() - held["log_p_model"].double()).mean()) / LN2
    rate_learned = float((held["log_q"].double() - learned).mean()) / LN2
    return {"rate_model_prior_bits": round(rate_model, 3), "rate_learned_prior_bits": round(rate_learned, 3),
            "saved_bits_per_image": round(rate_model - rate_learned, 3)}


def fit(model: LatentModel, images: Tensor, out: Path, fc: PriorFitConfig, *, fingerprint: str, resume: bool,
        emit: Callable[[dict[str, Any]], None], info: Callable[[str], None],
        progress: Callable[[int, str], Any]) -> dict[str, Any]:
    """Fit (or continue fitting) and write the companion file ``out``; returns the last report."""
    from ..base.atomic import atomic_write_bytes, atomic_write_with
    from .data import holdout_split

    dim = check_layers(fc.layers, model.cfg.latent_shapes, fc.kind)
    state_path, latents_path = state_paths(out)
    t0 = time.monotonic()
    if resume:
        saved, data = _read_state(state_path, latents_path)
        was = (saved["config"]["layers"], saved["config"].get("kind", "made"))
        if was != (fc.layers, fc.kind):
            raise UsageError(f"{state_path} fits a {was[1]} prior over {was[0]} layers, not a {fc.kind} one over {fc.layers}",
                             hint=f"resume with --kind {was[1]} --layers {was[0]}, or start a new fit")
        fc = PriorFitConfig(**{**saved["config"], "hidden": tuple(saved["config"]["hidden"]),
                               "steps": fc.steps, "time_limit": fc.time_limit})
    else:
        train_idx, held_idx = holdout_split(len(images), min(fc.holdout, len(images) // 5) or 1, fc.seed)
        with progress(len(train_idx), "encoding") as advance:
            train = encode_top(model, images[train_idx], fc.layers, fc.draws, fc.seed, progress=advance)
        with progress(len(held_idx), "encoding held-out") as advance:
            held = encode_top(model, images[held_idx], fc.layers, 1, fc.seed + 1, trace=True, progress=advance)
        data = {"z": train["z"], **{f"held_{k}": v for k, v in held.items()}}
        atomic_write_with(latents_path, lambda f: torch.save(data, f), force=True)
        saved = None
    z = data["z"]
    held = {k.removeprefix("held_"): v for k, v in data.items() if k.startswith("held_")}
    if z.shape[1] != dim:
        raise TrainingError(f"{latents_path} holds latents of {z.shape[1]} dims, not the {dim} of {fc.layers} layers")
    torch.manual_seed(fc.seed)
    prior = _new_prior(fc, dim, model.cfg.latent_shapes[0])
    fc = PriorFitConfig(**{**asdict(fc), "hidden": _hidden_of(prior)})
    prior.init_from(z)
    opt = torch.optim.Adam(prior.parameters(), lr=fc.lr)
    gen = torch.Generator().manual_seed(fc.seed + 2)
    step, history = 0, []
    best: dict[str, Any] = {}  # the held-out best so far: what the companion file holds (early stopping)
    if saved is not None:
        prior.load_state_dict(saved["prior"])
        opt.load_state_dict(saved["optimizer"])
        gen.set_state(saved["rng"])
        step, history = int(saved["step"]), [json.loads(h) for h in saved["history"]]
        best = {"state": saved["best"], **json.loads(saved["best_report"])}

    def evaluated(report: dict[str, Any]) -> None:
        history.append(report)
        emit(report)
        if not best or report["rate_learned_prior_bits"] < best["rate_learned_prior_bits"]:
            best.update(report, state={k: v.detach().clone() for k, v in prior.state_dict().items()})

    if step == 0:
        evaluated({"event": "eval", "step": 0, **heldout_report(prior, held)})
    info(f"fitting a {'MADE' if fc.kind == 'made' else 'spatial (PixelCNN++ blocks)'} prior ({sum(p.numel() for p in prior.parameters()):,} parameters) to {len(z):,} posterior "
         f"draws of layers 0-{fc.layers - 1} ({dim} dims), {fc.batch_size} per step, from step {step:,} to {fc.steps:,}"
         + (f", at most {fc.time_limit / 60:g} min" if fc.time_limit else ""))

    def checkpoint(kind: str) -> None:
        report = {k: v for k, v in best.items() if k != "state"}
        state = {"prior": prior.state_dict(), "optimizer": opt.state_dict(), "step": step, "rng": gen.get_state(),
                 "history": [json.dumps(h) for h in history], "config": {**asdict(fc), "hidden": list(fc.hidden)},
                 "fingerprint": fingerprint, "best": best["state"], "best_report": json.dumps(report)}
        atomic_write_with(state_path, lambda f: torch.save(state, f), force=True)
        kept = type(prior)(prior.cfg)
        kept.load_state_dict(best["state"])
        extra = {"fit_steps": str(step), "chosen_step": str(report["step"]), "draws": str(fc.draws),
                 "heldout_saved_bits_per_image": str(report["saved_bits_per_image"])}
        atomic_write_bytes(out, prior_bytes(kept, layers=fc.layers, fingerprint=fingerprint,
                                            model_name=model.cfg.name, extra=extra), force=True)
        emit({"event": "checkpoint", "step": step, "kind": kind, "path": str(out)})

    stopped = "done"
    with progress(fc.steps - step, "fitting") as advance:
        while step < fc.steps:
            if fc.time_limit is not None and time.monotonic() - t0 > fc.time_limit:
                stopped = "time limit"
                break
            idx = torch.randint(0, len(z), (fc.batch_size,), generator=gen)
            loss = -prior.log_prob(z[idx]).mean() / dim
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(prior.parameters(), 100.0)
            opt.step()
            step += 1
            advance(1)
            if not math.isfinite(float(loss)):
                raise TrainingError(f"the prior's loss is not finite at step {step}", hint="lower --lr")
            if step % fc.eval_every == 0 or step == fc.steps:
                evaluated({"event": "eval", "step": step, "train_nats_per_dim": round(float(loss), 4),
                           **heldout_report(prior, held)})
    if history[-1].get("step") != step:
        evaluated({"event": "eval", "step": step, **heldout_report(prior, held)})
    checkpoint(stopped)
    chosen = {k: v for k, v in best.items() if k not in ("state", "event")}
    return {**chosen, "steps": step, "stopped": stopped, "path": str(out)}


def _new_prior(fc: PriorFitConfig, dim: int, top_shape) -> Any:
    """The prior a fit starts from (before its data-dependent start)."""
    if fc.kind == "spatial":
        from ..engine.spatial_prior import SpatialConfig, SpatialPrior

        channels, size = int(top_shape[0]), int(top_shape[1])
        width = fc.hidden[0] if fc.hidden else max(64, 8 * channels)
        try:
            cfg = SpatialConfig(channels=channels, size=size, filters=fc.filters, blocks=fc.blocks, hidden=width,
                                components=fc.components)
        except ValueError as exc:
            raise UsageError(f"spatial prior: {exc}") from None
        return SpatialPrior(cfg)
    hidden = fc.hidden or (min(1024, max(256, 2 * dim)),) * 2  # wider than the input: every unit has a degree
    return MadePrior(MadeConfig(dim=dim, hidden=tuple(hidden), components=fc.components))


def _hidden_of(prior: Any) -> tuple[int, ...]:
    return tuple(prior.cfg.hidden) if isinstance(prior.cfg.hidden, tuple) else (int(prior.cfg.hidden),)


_SAVED_KEYS = {"prior": dict, "optimizer": dict, "step": int, "rng": torch.Tensor, "history": list, "config": dict,
               "best": dict, "best_report": str}


def _read_state(state_path: Path, latents_path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from ..base.safety import first_line

    for path in (state_path, latents_path):
        if not path.is_file():
            raise UsageError(f"nothing to resume: {path} does not exist", hint="start the fit without --resume")
    try:
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        data = torch.load(latents_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrainingError(f"{state_path} or {latents_path} cannot be read: {first_line(exc)}",
                            hint="start a new fit") from None
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), t) for k, t in _SAVED_KEYS.items()):
        raise TrainingError(f"{state_path} is not a prior fit's state")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), Tensor) for k in
                                             ("z", "held_z", "held_log_q", "held_log_p_model")):
        raise TrainingError(f"{latents_path} is not a prior fit's latents")
    if not all(bool(torch.isfinite(t).all()) for t in data.values()):
        raise TrainingError(f"{latents_path} holds values that are not finite")
    return saved, data


def fit_exemplar(model: LatentModel, images: Tensor, out: Path, *, layers: int, count: int, seed: int,
                 fingerprint: str, force: bool = False) -> dict[str, Any]:
    """Write an exemplar prior (:mod:`vdvae_cli.engine.exemplar_prior`) over the first ``layers``
    layers: ``count`` of ``images`` (uint8 NHWC) picked at random by ``seed`` (all when there are
    fewer), stored at the model's channels. Nothing is trained, so there is no state to resume.

    Reported: the covered layers' rate (the posterior's KL there, bits per image) on up to 500 of the
    stored images, what a draw takes from its exemplar on average."""
    from ..base.atomic import atomic_write_bytes
    from ..engine import ops
    from ..engine.exemplar_prior import ExemplarConfig, ExemplarPrior

    cfg = model.cfg
    dim = check_layers(layers, cfg.latent_shapes, "exemplar")
    if count < 1:
        raise UsageError(f"--exemplars must be >= 1, got {count}")
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(images), generator=gen)[: min(count, len(images))]
    stored = ops.as_channels(images.index_select(0, chosen), cfg.image_channels).contiguous()
    prior = ExemplarPrior(ExemplarConfig(dim=dim, count=len(stored), size=cfg.image_size, channels=cfg.image_channels))
    prior.images.copy_(stored)
    probe = stored[:500]
    kl = torch.cat([ops.elbo(model, probe[s:s + 100], noise=BatchNoise(gen)).kl_per_layer[:, :layers]
                    for s in range(0, len(probe), 100)])
    rate = float(kl.double().sum(1).mean() * cfg.n_dims / LN2)
    extra = {"exemplars_seed": str(seed), "covered_rate_bits_per_image": f"{rate:.2f}"}
    atomic_write_bytes(out, prior_bytes(prior, layers=layers, fingerprint=fingerprint, model_name=cfg.name, extra=extra),
                       force=force)
    return {"kind": "exemplar", "layers": layers, "exemplars": len(stored), "of_images": len(images),
            "covered_rate_bits_per_image": round(rate, 2), "bytes": out.stat().st_size, "path": str(out)}
