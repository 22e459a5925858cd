"""scripts/fashion_metrics.py and scripts/prepare_fashion_mnist.py on tiny inputs with hand-checked numbers."""

from __future__ import annotations

import gzip
import math
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from fashion_metrics import (  # noqa: E402
    classes_present, confident_share, confident_share_by_class, copy_report, frechet_distance, grey_histogram_bpd,
    histogram_bpd, histogram_entropy_bits, nearest_rms,
)
from prepare_fashion_mnist import IdxError, parse_idx, read_idx, to_model_input  # noqa: E402


def test_confident_share_counts_rows_at_or_above_the_threshold():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    assert confident_share(probs, 0.9) == 0.5  # 0.95 and exactly 0.9
    assert confident_share(probs, 0.5) == 1.0


def test_confident_share_by_class_counts_within_each_predicted_class():
    probs = np.array([[0.95, 0.05, 0.0], [0.6, 0.4, 0.0], [0.5, 0.5, 0.0], [0.0, 0.05, 0.95]])
    # class 0 is predicted three times (argmax of a tie is the first), once at >= 0.9; class 1 never
    assert confident_share_by_class(probs, 3, 0.9) == [round(1 / 3, 4), None, 1.0]


def test_class_presence_and_histogram_entropy():
    assert classes_present(np.array([0, 0, 3, 9]), 10) == 3
    assert histogram_entropy_bits(np.array([2, 2, 2]), 10) == 0.0  # one class only
    assert histogram_entropy_bits(np.array([0, 1, 0, 1]), 10) == pytest.approx(1.0)
    assert histogram_entropy_bits(np.arange(10), 10) == pytest.approx(math.log2(10))
    # counts 2, 1, 1 -> p = 1/2, 1/4, 1/4 -> 0.5 + 0.5 + 0.5 bits
    assert histogram_entropy_bits(np.array([5, 5, 1, 7]), 10) == pytest.approx(1.5)


def test_frechet_distance_by_hand():
    a = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # mean (1, 1), cov diag(4/3, 4/3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # a shift moves only the mean term: |(3, 4)|^2 = 25
    assert frechet_distance(a, a + [3.0, 4.0]) == pytest.approx(25.0)
    # scaling by 2: cov diag(16/3): tr = 2 * (4/3 + 16/3 - 2 * sqrt(64/9)) = 2 * (20/3 - 16/3) = 8/3; mean (2,2) vs (1,1): 2
    assert frechet_distance(a, 2 * a) == pytest.approx(2.0 + 8.0 / 3.0)
    assert frechet_distance(a, 2 * a) == pytest.approx(frechet_distance(2 * a, a))
    with pytest.raises(ValueError):
        frechet_distance(a, a[:, :1])


def test_histogram_baselines_by_hand():
    train = np.array([[0, 1], [0, 1], [0, 2]], dtype=np.uint8)
    test = np.array([[0, 2]], dtype=np.uint8)
    # alpha 1: position 0 value 0: (3 + 1) / (3 + 256); position 1 value 2: (1 + 1) / 259
    want = -(math.log2(4 / 259) + math.log2(2 / 259)) / 2
    assert histogram_bpd(train, test) == pytest.approx(want)
    rgb_train, rgb_test = np.repeat(train[..., None], 3, -1), np.repeat(test[..., None], 3, -1)
    assert grey_histogram_bpd(rgb_train, rgb_test) == pytest.approx(want / 3)
    assert histogram_bpd(rgb_train, rgb_test) == pytest.approx(want)  # three copies: the same per dimension


def _idx(shape: tuple[int, ...], data: bytes, dtype: int = 0x08) -> bytes:
    return struct.pack(">HBB", 0, dtype, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + data


def test_idx_reader_checks_the_header_against_the_size(tmp_path):
    raw = _idx((2, 2, 3), bytes(range(12)))
    assert parse_idx(raw, ndim=3).tolist() == [[[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]]
    (tmp_path / "x-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    assert read_idx(tmp_path / "x-idx3-ubyte.gz", ndim=3).shape == (2, 2, 3)
    for bad, message in [
        (raw[:-1], "promises"),  # truncated data
        (raw + b"\0", "promises"),  # trailing bytes
        (_idx((2, 2, 3), bytes(12), dtype=0x0D), "unsigned-byte"),  # float data
        (b"\x00\x00", "too short"),
        (raw[:9], "header is truncated"),
        (_idx((2, 6), bytes(12)), "dimensions"),
        (_idx((4_000_000_000, 4_000_000_000, 1), b""), "promises"),  # a huge claim is refused, not allocated
    ]:
        with pytest.raises(IdxError, match=message):
            parse_idx(bad, ndim=3)


def test_padding_keeps_polarity_and_repeats_grey():
    grey = np.full((1, 28, 28), 200, dtype=np.uint8)
    out = to_model_input(grey)
    assert out.shape == (1, 32, 32, 3) and out.dtype == np.uint8
    assert (out[0, :2] == 0).all() and (out[0, :, -2:] == 0).all()  # black border
    assert (out[0, 2:30, 2:30] == 200).all()  # the item keeps its grey (no inversion)
    assert (out[..., 0] == out[..., 2]).all()


def test_prior_gap_rows_fall_at_each_change_of_resolution():
    from evaluate_fashion import prior_gap_keeps

    # the shipped fashion model's 18 layers: six at 1x1, three at 4x4, four at 8x8, three at 16x16, two at 32x32
    res = [1] * 6 + [4] * 3 + [8] * 4 + [16] * 3 + [32] * 2
    assert prior_gap_keeps(res) == [0, 1, 6, 7, 9, 10, 13, 14, 16, 17, 18]
    assert prior_gap_keeps([8, 8]) == [0, 1, 2]


def test_nearest_rms_and_copy_report_by_hand():
    train = np.zeros((3, 2, 2, 1), np.uint8)
    train[1] = 10
    train[2, 0, 0] = 200
    images = np.array([train[1], np.full((2, 2, 1), 13, np.uint8), train[2]])
    # a copy is 0 away; all 13s are 3 from all 10s; the third is a copy of train[2]
    assert np.allclose(nearest_rms(images, train, chunk=2), [0.0, 3.0, 0.0])
    real = np.arange(1.0, 101.0)  # its 1st percentile is 1.99
    report = copy_report(np.array([0.5, 50.0, 60.0, 70.0]), real)
    assert report["share_samples_below_real_p1"] == 0.25 and report["real_p1_rms"] == 1.99
    assert report["sample_median_rms"] == 55.0 and report["sample_min_rms"] == 0.5
