"""A VDVAE's state_dict keys and shapes, and its working memory, from the config alone (no module
is built, not even on the meta device): a hostile config is compared with its file before anything
is allocated for it."""

from __future__ import annotations

from collections import OrderedDict

from .config import VDVAEConfig
from .config import DecoderLayer, EncoderLayer


def vdvae_state_shapes(cfg: VDVAEConfig) -> "OrderedDict[str, tuple[int, ...]]":
    """:func:`expected_shapes` of a VDVAE, from the config alone (no module is built, not even on
    the meta device)."""
    out: "OrderedDict[str, tuple[int, ...]]" = OrderedDict()

    def block(prefix: str, cin: int, mid: int, cout: int, k: int) -> None:
        for name, shape in (("c1", (mid, cin, 1, 1)), ("c2", (mid, mid, k, k)), ("c3", (mid, mid, k, k)),
                            ("c4", (cout, mid, 1, 1))):
            out[f"{prefix}.{name}.weight"] = shape
            out[f"{prefix}.{name}.bias"] = (shape[0],)

    out["encoder.in_conv.weight"] = (cfg.width, cfg.image_channels, 3, 3)
    out["encoder.in_conv.bias"] = (cfg.width,)
    for i, e in enumerate(cfg.encoder_layers):
        block(f"encoder.enc_blocks.{i}", e.width, e.middle, e.width, e.kernel)
    out["decoder.gain"] = (1, cfg.width, 1, 1)
    out["decoder.bias"] = (1, cfg.width, 1, 1)
    for i, l in enumerate(cfg.decoder_layers):
        p = f"decoder.dec_blocks.{i}"
        block(f"{p}.enc", 2 * l.width, l.middle, 2 * l.zdim, l.kernel)
        block(f"{p}.prior", l.width, l.middle, 2 * l.zdim + l.width, l.kernel)
        out[f"{p}.z_proj.weight"] = (l.width, l.zdim, 1, 1)
        out[f"{p}.z_proj.bias"] = (l.width,)
        block(f"{p}.resnet", l.width, l.middle, l.width, l.kernel)
    for j, r in enumerate(cfg.bias_resolutions):
        out[f"decoder.bias_xs.{j}"] = (1, cfg.width_at(r), r, r)
    n_out = (10 if cfg.image_channels == 3 else 3) * cfg.num_mixtures  # engine.distributions.dmol_param_count
    out["decoder.out_net.out_conv.weight"] = (n_out, cfg.width, 1, 1)
    out["decoder.out_net.out_conv.bias"] = (n_out,)
    return out


def vdvae_activation_bytes(cfg: VDVAEConfig, itemsize: int = 4, *, encoder: bool = True) -> int:
    """A generous estimate of the working memory one image needs in a forward pass (bytes), from the
    config alone: the encoder's kept activations, the decoder's states, a block's temporaries and
    the output head. Used to refuse a model that cannot run here before building it."""
    per_res: dict[int, int] = {}
    layers: tuple[EncoderLayer | DecoderLayer, ...] = (*cfg.encoder_layers, *cfg.decoder_layers)
    for l in layers:
        per_res[l.res] = max(per_res.get(l.res, 0), l.width * l.res * l.res)
    states = sum(per_res.values())
    biggest = max(per_res.values())
    head = 10 * cfg.num_mixtures * cfg.image_size ** 2 * 4  # DMoL parameters, float32
    return ((2 if encoder else 1) * states + 6 * biggest) * itemsize + 3 * head
