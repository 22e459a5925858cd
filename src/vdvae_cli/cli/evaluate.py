"""``vdvae eval`` (negative ELBO in bits/dim, per-layer KL) and ``vdvae info`` (the layer table)."""

from __future__ import annotations

import math
import time
from typing import Annotated, Any

import typer

from ..base.errors import UsageError
from ._app import command, emit_json, out
from ._run import (BatchOpt, MAX_IMPORTANCE_SAMPLES, NoResizeOpt, Session, check_batch_size, check_positive,
                   collect_inputs, read_shard)
from .options import CompileOpt, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, OfflineOpt, PriorOpt, QuietOpt, SeedOpt, default_model

LN2 = math.log(2)


@command(
    "eval",
    help=(
        "Negative ELBO in bits/dim, its distortion and rate, and the KL of every latent layer.\n\n"
        "The per-layer KL table shows where an image's information lives. With --samples K > 1, bits/dim is "
        "the importance-weighted bound (tighter than the ELBO); distortion and rate are then means over the K "
        "posterior draws.\n\n"
        "--json prints one object per image and a final summary object (type \"summary\"). kl_bits_per_layer is "
        "each layer's KL in bits for the whole image; their sum divided by the image's dimensions is the "
        "rate."
    ),
    epilog="Examples:\n\n"
    "  vdvae eval photo.png\n\n"
    "  vdvae eval photos/ --json | jq .bits_per_dim\n\n"
    "  vdvae eval test-set/ --samples 64 --batch-size 4 --seed 0 --json > nll.jsonl",
)
def evaluate(
    images: Annotated[list[str], typer.Argument(
        metavar="IMG", help="Image files, folders, or - for an image on stdin.", show_default=False)],
    samples: Annotated[int, typer.Option(
        "--samples", "-s", metavar="K", help="Posterior samples per image; K > 1 gives the importance-weighted bound.")] = 1,
    no_resize: NoResizeOpt = False,
    seed: SeedOpt = None,
    batch_size: BatchOpt = "auto",
    model: ModelOpt = None,
    offline: OfflineOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "fp32",
    compile: CompileOpt = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    prior: PriorOpt = "auto",
) -> None:
    from ..engine import ops
    from ..base.safety import non_finite_keys

    check_positive("--samples", samples, MAX_IMPORTANCE_SAMPLES)
    check_batch_size(batch_size)
    sources = collect_inputs(images)
    run = Session(quiet=quiet, json_out=json_out)
    vae = run.load_model(model, device, dtype, compile=compile, offline=offline, latents=False)
    top = run.load_prior(prior, density=True)
    cfg = vae.cfg
    mine, pixels = read_shard(run, sources, cfg.image_size, no_resize)  # under torchrun: this process's share
    seed = run.seed(seed)
    bound = "elbo" if samples == 1 else "importance-weighted"
    if cfg.n_layers == 0:  # an autoregressive model (PixelCNN++): one pass gives the likelihood itself
        if samples > 1:
            raise UsageError(f"model {cfg.name} has no latent layers: its likelihood is exact, so importance "
                             "sampling has nothing to tighten", hint="drop --samples")
        bound = "exact"
    rows: list[dict[str, Any]] = []
    run.announce()

    def evaluate_batch(indices: list[int]):
        x = pixels(indices)
        result = ops.elbo(vae, x, samples=samples, noise=run.noise(seed, indices), prior=top)
        if top is None:
            return result, None
        # the same images and draws under the model's own prior: both bounds side by side
        return result, ops.elbo(vae, x, samples=samples, noise=run.noise(seed, indices)).nll_bound

    with run.progress(len(mine), "evaluating") as advance:
        t0 = time.perf_counter()
        for indices, (result, own_bound) in run.batches(mine, batch_size, evaluate_batch):
            batch_seconds = time.perf_counter() - t0
            kl_bits = (result.kl_per_layer.double() * cfg.n_dims / LN2).cpu()  # (N, L) bits per image
            for j, i in enumerate(indices):
                row: dict[str, Any] = {
                    "type": "image", "index": i, "input": sources[i].name,
                    "bits_per_dim": float(result.nll_bound[j]) / LN2,
                    "nats_per_dim": float(result.nll_bound[j]),
                    "elbo_bits_per_dim": float(result.elbo[j]) / LN2,
                    "distortion_bits_per_dim": float(result.distortion[j]) / LN2,
                    "rate_bits_per_dim": float(result.rate[j]) / LN2,
                    "kl_bits_per_layer": kl_bits[j].tolist(),
                    "samples": samples, "bound": bound, "seed": seed, "model": cfg.name,
                    "prior": "model" if top is None else "learned",
                    "batch_seconds": round(batch_seconds, 4), "batch_size": len(indices),
                }
                if own_bound is not None:
                    row["model_prior_bits_per_dim"] = float(own_bound[j]) / LN2
                bad = non_finite_keys(row)
                if bad:
                    row["null_reason"] = (f"{', '.join(bad)} not finite: the model's likelihood overflows for "
                                          "this image (its weights or this input are out of range)")
                rows.append(row)
                if json_out and run.shard.world == 1:
                    run.emit(row)
            advance(len(indices))
            t0 = time.perf_counter()
    if run.shard.world > 1:  # rank 0 reports every image, in input order, and the mean over all of them
        rows = sorted(run.gather(rows), key=lambda r: r["index"])
        run.failed = run.gather(run.failed)
        if not run.shard.main:
            run.finish(len(sources))
            return
        if json_out:
            for row in rows:
                run.emit(row)
    if not rows:
        run.finish(len(sources))  # nothing could be read
    summary = _summary(rows, cfg.n_layers)
    if top is not None:
        summary["model_prior_bits_per_dim"] = sum(r["model_prior_bits_per_dim"] for r in rows) / len(rows)
        summary["learned_prior"] = {"layers": top.layers, "path": top.source}
    summary.update(samples=samples, bound=bound, seed=seed, model=cfg.name, prior="model" if top is None else "learned",
                   seconds=round(time.perf_counter() - run.started, 4))
    if json_out:
        run.emit(summary)
    else:
        _print_report(rows, summary, cfg)
    run.finish(len(sources))


def _summary(rows: list[dict[str, Any]], n_layers: int) -> dict[str, Any]:
    from ..base.safety import non_finite_keys

    n = len(rows)
    mean = lambda key: sum(r[key] for r in rows) / n  # noqa: E731
    keys = ("bits_per_dim", "nats_per_dim", "elbo_bits_per_dim", "distortion_bits_per_dim", "rate_bits_per_dim")
    summary: dict[str, Any] = {"type": "summary", "images": n}
    summary.update({k: mean(k) for k in keys})
    summary["kl_bits_per_layer"] = [sum(r["kl_bits_per_layer"][i] for r in rows) / n for i in range(n_layers)]
    bad = non_finite_keys(summary)
    if bad:
        count = sum(1 for r in rows if "null_reason" in r)
        summary["null_reason"] = (f"{', '.join(bad)} not finite: {count} of {n} images have a likelihood that "
                                  "overflows")
    return summary


def _num(value: float, spec: str) -> str:
    """A number for the text report; n/a where it is not finite."""
    return format(value, spec) if math.isfinite(value) else format("n/a", ">" + spec.split(".")[0].lstrip(">"))


def _print_report(rows: list[dict[str, Any]], summary: dict[str, Any], cfg) -> None:
    from ..base.safety import clean

    rows = [{**r, "input": clean(r["input"])} for r in rows]
    width = max(5, *(len(r["input"]) for r in rows))
    what = "negative ELBO" if summary["samples"] == 1 else f"importance-weighted bound, {summary['samples']} samples"
    if summary["bound"] == "exact":
        what = "exact negative log-likelihood (no latent layers)"
    out(f"{cfg.name}: {len(rows)} image{'s' if len(rows) != 1 else ''}, {what}")
    out(f"{'image':<{width}}  {'bits/dim':>9}  {'nats/dim':>9}  {'distortion':>10}  {'rate':>8}")
    for r in [*rows, {**summary, "input": "mean"}] if len(rows) > 1 else rows:
        out(f"{r['input']:<{width}}  {_num(r['bits_per_dim'], '>9.4f')}  {_num(r['nats_per_dim'], '>9.4f')}  "
            f"{_num(r['distortion_bits_per_dim'], '>10.4f')}  {_num(r['rate_bits_per_dim'], '>8.4f')}")
    out("(distortion and rate in bits/dim)")
    if "learned_prior" in summary:
        lp = summary["learned_prior"]
        out(f"with the learned prior over layers 0-{lp['layers'] - 1} ({lp['path']}): {summary['bits_per_dim']:.4f} "
            f"bits/dim; with the model's own prior: {summary['model_prior_bits_per_dim']:.4f}")
    if "null_reason" in summary:
        out(f"n/a: {summary['null_reason']}")
    kl = summary["kl_bits_per_layer"]
    if not kl or not all(math.isfinite(b) for b in kl):
        return
    total = sum(kl) or 1.0
    top = max(kl) or 1.0
    scope = "mean over the images" if len(rows) > 1 else rows[0]["input"]
    out()
    out(f"KL per latent layer ({scope})")
    out(f"{'layer':>5}  {'res':>4}  {'KL bits':>10}  {'share':>6}")
    for layer, bits in zip(cfg.decoder_layers, kl):
        bar = "#" * round(20 * bits / top)
        out(f"{layer.index:>5}  {layer.res:>4}  {bits:>10.2f}  {100 * bits / total:>5.1f}%  {bar}")
    by_res: dict[int, float] = {}
    for layer, bits in zip(cfg.decoder_layers, kl):
        by_res[layer.res] = by_res.get(layer.res, 0.0) + bits
    out("by resolution: " + ", ".join(f"{r}: {100 * b / total:.1f}%" for r, b in by_res.items()))


@command(
    "info",
    help=(
        "Describe a model: its latent layers (index, resolution, width, zdim) and sizes.\n\n"
        "Also shows how many layers each --keep-res keeps. Reads only the file's header, not the weights; "
        "a registry model that is not downloaded yet is described from its known config, without downloading."
    ),
    epilog="Examples:\n\n"
    "  vdvae info\n\n"
    "  vdvae info --model ffhq256\n\n"
    "  vdvae info --model my.safetensors --json | jq .layers_up_to_res",
)
def info(
    model: ModelOpt = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Never reach the network (also VDVAE_OFFLINE=1 or HF_HUB_OFFLINE=1). A registry model is "
        "described without a download anyway; only an hf:// model not yet cached would be fetched to read its header.",
    )] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    from ..modelfiles.header import default_ood, default_temperatures
    from ..engine.registry import family_of
    from ..modelfiles.describe import describe_model

    facts = describe_model(default_model(model), offline=offline)
    cfg = facts.cfg
    where = f"{facts.path} ({facts.source})" if facts.path else facts.note
    if cfg is None:  # a registry model whose architecture comes with its download
        if json_out:
            emit_json({"model": facts.name, "path": None, "source": facts.source, "note": facts.note,
                       "parameters": facts.parameters})
        else:
            out(f"model        {facts.name}")
            out(f"file         {where}")
        return
    temperature, output_temperature = default_temperatures(facts.path) if facts.path else (None, None)
    ood_recorded = default_ood(facts.path) if facts.path else None
    learned = _learned_prior_facts(facts.path) if facts.path else None
    keep_res = {r: cfg.layers_up_to_res(r) for r in cfg.resolutions}
    # width and mixin are VDVAE's words for a layer; another family's layer may not have a mixin
    layers = [{"index": l.index, "res": l.res, "width": l.width, "zdim": l.latent_shape[0],
               "mixin": getattr(l, "mixin", None), "latent_shape": list(l.latent_shape)} for l in cfg.decoder_layers]
    if json_out:
        emit_json({
            "model": cfg.name, "family": family_of(cfg).name,
            "path": str(facts.path) if facts.path else None, "source": facts.source,
            "fingerprint": facts.fingerprint, "image_size": cfg.image_size, "dataset": cfg.dataset,
            "n_layers": cfg.n_layers, "resolutions": list(cfg.resolutions), "latent_dims": cfg.latent_dims,
            "parameters": facts.parameters, "layers_up_to_res": {str(r): k for r, k in keep_res.items()},
            "layers": layers, "default_temperature": temperature, "default_output_temperature": output_temperature,
            "default_ood": ood_recorded, "learned_prior": learned,
            "config": cfg.to_dict(),
        })
        return
    out(f"model        {cfg.name}")
    out(f"family       {family_of(cfg).name.upper()}")
    out(f"file         {where}")
    out(f"fingerprint  {facts.fingerprint or '(known once downloaded)'}")
    out(f"image        {cfg.image_size}x{cfg.image_size}x{cfg.image_channels} (dataset {cfg.dataset})")
    if cfg.n_layers == 0:
        out("latents      none: an autoregressive model, sampled pixel by pixel (sample, eval, train; "
            "commands on latents refuse it)")
    else:
        out(f"latents      {cfg.n_layers} layers, {cfg.latent_dims:,} dims per image")
    out(f"parameters   {facts.parameters:,}" if facts.parameters else "parameters   ?")
    if cfg.n_layers == 0:
        out(f"temperature  output {output_temperature or '1.0'} (what sample uses without --output-temp)")
    else:
        out(f"temperature  {temperature or '1.0'}, output {output_temperature or '1.0'} "
            "(what sample, reconstruct, mix and decode use without --temp, --output-temp)")
    if learned:
        kind = {"made": "MADE", "spatial": "spatial, PixelCNN++ blocks",
                "exemplar": "exemplar: posterior draws of stored training images"}.get(learned.get("kind", ""), "unknown kind")
        uses = ("what sample draws; after kept layers and in eval the model's own (it draws from nothing given, "
                "has no density)"
                if learned.get("kind") == "exemplar" else "what sample, decode and eval use")
        out(f"prior        learned ({kind}), over latent layers 0-{learned['layers'] - 1} ({learned['path']}): {uses}; "
            "--prior model for the model's own")
    if ood_recorded:
        how = f" ({ood_recorded['source']})" if ood_recorded.get("source") else ""
        if ood_recorded.get("score") == "complexity":
            out(f"ood          --score complexity{how} (what ood uses without --score and --k)")
        else:
            score = "--score llr " if ood_recorded.get("score") else ""
            out(f"ood          {score}--k {ood_recorded.get('k', '1')} --prior-temp "
                f"{ood_recorded.get('prior_temperature', '1.0')}{how} (what ood uses without --k)")
    if cfg.n_layers == 0:
        out("config       " + ", ".join(f"{k}={v}" for k, v in cfg.to_dict().items() if k not in ("name", "dataset")))
        return
    out("--keep-res   " + ", ".join(f"{r} -> {k} layers" for r, k in keep_res.items()))
    out()
    out(f"{'layer':>5}  {'res':>4}  {'width':>5}  {'zdim':>4}  {'mixin':>5}")
    for row in layers:
        out(f"{row['index']:>5}  {row['res']:>4}  {row['width']:>5}  {row['zdim']:>4}  {row['mixin'] or '-':>5}")


def _learned_prior_facts(model_path) -> dict[str, Any] | None:
    """The companion learned prior beside a model file (header only), or None."""
    from ..engine.companion import PRIOR_FORMAT, companion_path
    from ..modelfiles.catalog import header_or_none

    path = companion_path(model_path)
    if not path.is_file():
        return None
    header = header_or_none(path) or {}
    found = header.get("__metadata__")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    layers = str(meta.get("layers", ""))
    if meta.get("format") != PRIOR_FORMAT or not layers.isdigit():
        return {"path": str(path), "layers": 0, "note": "unreadable learned-prior file"}
    kind = str(meta.get("kind", "made"))
    return {"path": str(path), "layers": int(layers), "kind": kind if kind in ("made", "spatial", "exemplar") else "unknown",
            "model_fingerprint": str(meta.get("model_fingerprint", ""))[:64]}
