"""The PolyAggregate error bound (``pom_deploy.ops.poly_aggregate.error_bound``) that every
implementation's test uses: met by float32 implementations that sum in different orders, and
tight enough that real mistakes exceed it."""

from __future__ import annotations

import numpy as np
import pytest

from pom_deploy.ops.poly_aggregate import error_bound, poly_aggregate, poly_features


def _inputs(seed, batch, tokens, channels, degree, variant, mode):
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal((batch, tokens, channels))).astype(np.float32)
    coeff = (rng.uniform(-1, 1, (channels, degree)) * 4.0 ** -np.arange(degree)).astype(np.float32) if variant == "v2" else None
    mask = (rng.random((batch, tokens)) < 0.6).astype(np.float32) if mode == "masked" else None
    return x, coeff, mask


def _float32_aggregate(f32: np.ndarray, mode: str, mask, order: str) -> np.ndarray:
    """Float32 sums in the order that rounds worst (one running sum) or pairwise."""
    def total(values):  # sum over axis 1, float32 throughout
        if order == "sequential":
            return np.cumsum(values, axis=1, dtype=np.float32)[:, -1:]
        while values.shape[1] > 1:
            if values.shape[1] % 2:
                values = np.concatenate([values, np.zeros_like(values[:, :1])], axis=1)
            values = values[:, 0::2] + values[:, 1::2]
        return values
    if mode == "mean":
        return total(f32) / np.float32(f32.shape[1])
    if mode == "causal":
        return np.cumsum(f32, axis=1, dtype=np.float32) / np.arange(1, f32.shape[1] + 1, dtype=np.float32)[None, :, None]
    m = mask.astype(np.float32)[..., None]
    return total(f32 * m) / total(m)


@pytest.mark.parametrize("order", ["sequential", "pairwise"])
@pytest.mark.parametrize("mode", ["mean", "causal", "masked"])
@pytest.mark.parametrize("variant", ["v1", "v2"])
def test_float32_implementations_meet_the_bound(variant, mode, order):
    x, coeff, mask = _inputs(1, 2, 4097, 12, 3, variant, mode)
    f32 = poly_features(x, 3, variant, coeff).astype(np.float32)  # features rounded to float32
    y = _float32_aggregate(f32, mode, mask, order)
    args = (x.astype(np.float64), 3, variant, mode, coeff, mask)
    assert np.all(np.abs(y - poly_aggregate(*args)) <= error_bound(*args))


@pytest.mark.parametrize("mode", ["mean", "causal", "masked"])
def test_dropping_one_token_exceeds_the_bound(mode):
    x, _, mask = _inputs(2, 2, 300, 8, 2, "v1", mode)
    args = (x, 2, "v1", mode, None, mask)
    expected, bound = poly_aggregate(*args), error_bound(*args)
    if mode == "masked":
        mask = mask.copy()
        mask[:, np.argmax(mask[0])] = 0.0  # one counted token left out
        wrong = poly_aggregate(x, 2, "v1", mode, None, mask)
    else:
        wrong = poly_aggregate(x[:, 1:], 2, "v1", mode, None, None)
        if mode == "causal":
            expected, bound = expected[:, 1:], bound[:, 1:]
    assert np.any(np.abs(wrong - expected) > bound)


def test_float16_accumulation_exceeds_the_bound():
    """Summing 20001 tokens in float16 (instead of float32) is caught."""
    x, _, _ = _inputs(3, 1, 20001, 4, 2, "v1", "mean")
    f16 = poly_features(x, 2, "v1").astype(np.float16)
    wrong = np.cumsum(f16, axis=1, dtype=np.float16)[:, -1:].astype(np.float64) / x.shape[1]
    args = (x, 2, "v1", "mean")
    assert np.any(np.abs(wrong - poly_aggregate(*args)) > error_bound(*args, dtype="float16"))


def test_output_rounding_is_in_the_bound():
    x, coeff, _ = _inputs(4, 2, 50, 6, 2, "v2", "mean")
    args = (x, 2, "v2", "mean", coeff)
    expected = poly_aggregate(*args)
    for dtype, storage in (("float16", np.float16), ("float32", np.float32)):
        rounded = expected.astype(storage).astype(np.float64)
        assert np.all(np.abs(rounded - expected) <= error_bound(*args, dtype=dtype))
