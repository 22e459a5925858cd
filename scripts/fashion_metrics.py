"""The sample-quality and likelihood figures of the fashion32 model card, as plain functions.

Kept apart from ``evaluate_fashion32.py`` (which loads data, models and a classifier) so that tests
can check each number on tiny inputs: numpy in, plain floats out, nothing random.
"""

from __future__ import annotations

import math

import numpy as np


def confident_share(probs: np.ndarray, threshold: float = 0.9) -> float:
    """Share of rows of ``probs`` (N, K) whose largest class probability is >= ``threshold``."""
    probs = np.asarray(probs, dtype=np.float64)
    return float((probs.max(axis=1) >= threshold).mean())


def confident_share_by_class(probs: np.ndarray, n_classes: int, threshold: float = 0.9) -> list[float | None]:
    """Per predicted class: the share of the rows predicted as that class whose probability is >=
    ``threshold`` (None for a class nothing was predicted as)."""
    probs = np.asarray(probs, dtype=np.float64)
    labels, sure = probs.argmax(axis=1), probs.max(axis=1) >= threshold
    return [round(float(sure[labels == c].mean()), 4) if (labels == c).any() else None for c in range(n_classes)]


def class_histogram(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """How often each of ``n_classes`` labels occurs (int64, length ``n_classes``)."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)[:n_classes]


def classes_present(labels: np.ndarray, n_classes: int) -> int:
    """How many of the ``n_classes`` classes occur at least once in ``labels``."""
    return int((class_histogram(labels, n_classes) > 0).sum())


def histogram_entropy_bits(labels: np.ndarray, n_classes: int) -> float:
    """Entropy in bits of the label histogram: log2(n_classes) when every class is equally common,
    0 when one class takes every image."""
    counts = class_histogram(labels, n_classes).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum()) + 0.0  # + 0.0: no "-0.0"


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a`` (N, D) and ``b`` (M, D):
    |mu_a - mu_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), covariances with N - 1.

    The trace of the product's root is taken through the symmetric matrix C_a^1/2 C_b C_a^1/2,
    whose eigenvalues are real and non-negative, so no complex square root is needed."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise ValueError(f"need two (N>=2, D) feature arrays of one width, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    c_a, c_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(c_a)
    middle = root_a @ c_b @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(c_a) + np.trace(c_b) - 2.0 * cross)


def histogram_bpd(train: np.ndarray, test: np.ndarray, alpha: float = 1.0) -> float:
    """Bits per dimension of uint8 ``test`` under one 256-bin histogram per position fitted on
    ``train`` (add-``alpha`` smoothing); every position of the flattened arrays is its own model."""
    t = np.asarray(train, dtype=np.uint8).reshape(len(train), -1)
    x = np.asarray(test, dtype=np.uint8).reshape(len(test), -1)
    if t.shape[1] != x.shape[1]:
        raise ValueError(f"train and test images differ in size: {t.shape[1]} against {x.shape[1]} values")
    counts = np.zeros((t.shape[1], 256))
    positions = np.arange(t.shape[1])
    for row in t:
        counts[positions, row] += 1
    probs = (counts + alpha) / (len(t) + 256 * alpha)
    return float(-np.log2(probs[positions[None, :], x]).mean())


def grey_histogram_bpd(train: np.ndarray, test: np.ndarray, alpha: float = 1.0) -> float:
    """:func:`histogram_bpd` of grey images stored as RGB (R = G = B), per RGB dimension: one histogram
    per pixel on the R plane, the G and B copies free (a baseline that knows the images are grey)."""
    return histogram_bpd(np.asarray(train)[..., 0], np.asarray(test)[..., 0], alpha) / 3.0


def nats_to_bits(x: float) -> float:
    return x / math.log(2.0)


def nearest_rms(images: np.ndarray, train: np.ndarray, chunk: int = 500) -> np.ndarray:
    """Per image, the RMS pixel difference (grey levels, 0-255) to its nearest image in ``train``:
    how close samples come to copying the training data, next to the same for real held-out images."""
    t = flat_float(train)
    t_sq = (t * t).sum(1)
    out = []
    for start in range(0, len(images), chunk):
        x = flat_float(images[start:start + chunk])
        d2 = (x * x).sum(1)[:, None] - 2.0 * x @ t.T + t_sq[None]
        out.append(np.sqrt(np.maximum(d2.min(1), 0.0) / x.shape[1]))
    return np.concatenate(out) if out else np.zeros(0)


def flat_float(images: np.ndarray) -> np.ndarray:
    """(N, ...) uint8 -> (N, D) float64 (exact sums of squares of 8-bit pixels)."""
    a = np.asarray(images)
    return a.reshape(len(a), -1).astype(np.float64)


def copy_report(sample_nn: np.ndarray, real_nn: np.ndarray) -> dict:
    """Samples' distances to their nearest training image against real held-out images' own: the
    medians, and the share of samples nearer than 99% of real images are (a copy would be near 0)."""
    p1 = float(np.percentile(real_nn, 1))
    return {"sample_median_rms": round(float(np.median(sample_nn)), 2),
            "real_median_rms": round(float(np.median(real_nn)), 2),
            "real_p1_rms": round(p1, 2),
            "share_samples_below_real_p1": round(float((sample_nn < p1).mean()), 4),
            "sample_min_rms": round(float(sample_nn.min()), 2)}
