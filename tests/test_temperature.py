"""``--temp`` specs on the tiny model: 13 layers, resolutions 1 (0-1), 4 (2-4), 8 (5-7), 16 (8-10), 32 (11-12)."""

from __future__ import annotations

import pytest

from vdvae_cli.base.errors import TemperatureSpecError, UsageError
from vdvae_cli.engine.temperature import parse_temperature_spec


def test_tiny_layout_is_what_these_tests_assume(golden_cfg):
    assert golden_cfg.n_layers == 13
    assert [l.res for l in golden_cfg.decoder_layers] == [1, 1, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0.6", [0.6] * 13),
        (" 0 ", [0.0] * 13),
        (0.25, [0.25] * 13),
        ("12=0.5", [1.0] * 12 + [0.5]),
        ("0.8,3=0.1", [0.8] * 3 + [0.1] + [0.8] * 9),
        ("0-2=0.9", [0.9] * 3 + [1.0] * 10),
        ("0.5,11-=0.2", [0.5] * 11 + [0.2, 0.2]),
        ("r8=0.3", [1.0] * 5 + [0.3] * 3 + [1.0] * 5),
        ("R1=0", [0.0, 0.0] + [1.0] * 11),
        ("0-4=1.0:0.6", [1.0, 0.9, 0.8, 0.7, 0.6] + [1.0] * 8),
        ("r16=0.2:0.4", [1.0] * 8 + [0.2, 0.3, 0.4] + [1.0] * 2),
        ("7-7=0.1:0.9", [1.0] * 7 + [0.1] + [1.0] * 5),
        ("12=2:0", [1.0] * 12 + [2.0]),
        ("0.9, 0-12=0.5, r32=0.1, 12=0.7", [0.5] * 11 + [0.1, 0.7]),
        ("1e-1", [0.1] * 13),
        ("3=1.5", [1.0] * 3 + [1.5] + [1.0] * 9),
    ],
)
def test_specs(golden_cfg, spec, expected):
    assert parse_temperature_spec(spec, golden_cfg) == pytest.approx(expected)


def test_later_entries_override_earlier_ones(golden_cfg):
    temps = parse_temperature_spec("0-12=0.5,5-8=0.9,6=0.1", golden_cfg)
    assert temps == pytest.approx([0.5] * 5 + [0.9, 0.1, 0.9, 0.9] + [0.5] * 4)
    assert parse_temperature_spec("r4=0.2,3=0.7", golden_cfg)[2:5] == pytest.approx([0.2, 0.7, 0.2])
    assert parse_temperature_spec("3=0.7,r4=0.2", golden_cfg)[2:5] == pytest.approx([0.2, 0.2, 0.2])


def test_ramp_is_linear_and_inclusive(golden_cfg):
    temps = parse_temperature_spec("0-12=1.0:0.4", golden_cfg)
    assert temps[0] == pytest.approx(1.0) and temps[12] == pytest.approx(0.4)
    steps = [b - a for a, b in zip(temps, temps[1:])]
    assert steps == pytest.approx([-0.05] * 12)


@pytest.mark.parametrize(
    "spec, entry, why",
    [
        ("", "empty", "empty"),
        ("0.5,,3=1", "entry 2", "empty"),
        ("abc", "'abc'", "not a number"),
        ("3=abc", "'3=abc'", "not a number"),
        ("3=-0.5", "'3=-0.5'", "negative"),
        ("-1", "'-1'", "negative"),
        ("3=nan", "'3=nan'", "finite"),
        ("3=inf", "'3=inf'", "finite"),
        ("13=0.5", "'13=0.5'", "13 latent layers"),
        ("10-20=0.5", "'10-20=0.5'", "layer 20 does not exist"),
        ("8-3=0.5", "'8-3=0.5'", "backwards"),
        ("-5=0.5", "'-5=0.5'", "first layer"),
        ("x=0.5", "'x=0.5'", "not a layer index"),
        ("=0.5", "'=0.5'", "nothing before"),
        ("r7=0.5", "'r7=0.5'", "no latent layers at resolution 7"),
        ("rx=0.5", "'rx=0.5'", "not r<resolution>"),
        ("0-4=1.0:x", "'0-4=1.0:x'", "not a number"),
        ("0-4=1.0:-1", "'0-4=1.0:-1'", "negative"),
        ("3=0.5,0.7", "'0.7'", "must come first"),
    ],
)
def test_bad_specs_name_the_entry_and_why(golden_cfg, spec, entry, why):
    with pytest.raises(TemperatureSpecError) as info:
        parse_temperature_spec(spec, golden_cfg)
    message = str(info.value)
    assert entry in message and why in message
    assert isinstance(info.value, UsageError) and info.value.exit_code == 2
    assert "\n" not in message


def test_resolution_hint_lists_the_model_resolutions(golden_cfg):
    with pytest.raises(TemperatureSpecError) as info:
        parse_temperature_spec("r64=0.5", golden_cfg)
    assert info.value.hint == "its resolutions are 1, 4, 8, 16, 32"


@pytest.mark.parametrize("spec, says", [
    ("12=0.5,12=0.7", "entries '12=0.5' and '12=0.7' both set layer 12"),
    ("r4=0.5,r4=0.7", "entries 'r4=0.5' and 'r4=0.7' both set resolution 4 (layers 2-4)"),
    ("0.6,1-=0.2,1-12=0.3", "entries '1-=0.2' and '1-12=0.3' both set layers 1-12"),
    ("5=0.2,5-5=0.3", "entries '5=0.2' and '5-5=0.3' both set layer 5"),
    ("0-3=0.5, 0-3 =1.0:0.2", "entries '0-3=0.5' and '0-3 =1.0:0.2' both set layers 0-3"),
])
def test_a_layer_or_resolution_named_twice_is_refused(tiny_ckpt, tmp_path, spec, says):
    from clirun import vdvae

    result = vdvae("sample", "-m", tiny_ckpt, "--temp", spec, "--seed", 1, "-o", tmp_path / "x.png", code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --temp ") and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.png").exists()
