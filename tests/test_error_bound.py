"""The PolyAggregate error bound (``pom_deploy.ops.poly_aggregate.error_bound``) that every
implementation's test uses: met by float32 implementations that sum in different orders, and
tight enough that real mistakes exceed it."""

from __future__ import annotations

import numpy as np
import pytest

from pom_deploy.ops.poly_aggregate import error_bound, poly_aggregate, poly_features, rope_pairs, rope_rotate


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


# ---------------------------------------------------------------- RoPE and block-causal frames


def _rope_tables(seed, batch, tokens, channels, dtype=np.float32):
    """cos, sin of random angles (B or 1, N, C/2), rounded to ``dtype`` as a kernel would see them."""
    angles = np.random.default_rng(seed).uniform(-np.pi, np.pi, (batch, tokens, channels // 2))
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def _float32_rotation(f32, rope, cos, sin):
    """The rotation in float32: every product and difference rounded to float32."""
    first, partner = rope_pairs(f32.shape[-1], rope)
    cos, sin = cos.astype(np.float32), sin.astype(np.float32)
    rotated = np.empty_like(f32)
    rotated[..., first] = f32[..., first] * cos - f32[..., partner] * sin
    rotated[..., partner] = f32[..., partner] * cos + f32[..., first] * sin
    return rotated


def _float32_block_causal(f32, frame_tokens, order):
    """Block-causal in float32: each frame summed (running or pairwise), frames added in order."""
    batch, tokens, channels = f32.shape
    frames = f32.reshape(batch * (tokens // frame_tokens), frame_tokens, channels)
    frame_sums = _float32_aggregate(frames, "mean", None, order) * np.float32(frame_tokens)
    prefix = np.cumsum(frame_sums.reshape(batch, -1, channels), axis=1, dtype=np.float32)
    counts = (np.arange(1, prefix.shape[1] + 1) * frame_tokens).astype(np.float32)[None, :, None]
    return np.repeat(prefix / counts, frame_tokens, axis=1)


# Every RoPE kind with every aggregation, and block-causal without RoPE (plain modes are above).
ROPE_AND_MODE = [(rope, mode) for rope in ("1d", "2d") for mode in ("mean", "causal", "masked", "block-causal")]
ROPE_AND_MODE.append(("none", "block-causal"))


@pytest.mark.parametrize("order", ["sequential", "pairwise"])
@pytest.mark.parametrize(("rope", "mode"), ROPE_AND_MODE)
def test_float32_rope_and_frames_meet_the_bound(rope, mode, order):
    """Features, rotation and sums in float32 (cos/sin per batch row or shared) stay within the bound."""
    frame_tokens = 64 if mode == "block-causal" else 0
    op_mode = "causal" if frame_tokens else mode
    x, coeff, mask = _inputs(5, 2, 4096, 16, 3, "v2", op_mode)
    cos, sin = _rope_tables(6, 1 if order == "pairwise" else 2, 4096, 16)
    f32 = poly_features(x, 3, "v2", coeff).astype(np.float32)
    if rope != "none":
        f32 = _float32_rotation(f32, rope, cos, sin)
    if frame_tokens:
        y = _float32_block_causal(f32, frame_tokens, order)
    else:
        y = _float32_aggregate(f32, op_mode, mask, order)
    args = (x.astype(np.float64), 3, "v2", op_mode, coeff, mask)
    options = dict(frame_tokens=frame_tokens, rope=rope, cos=cos, sin=sin)
    assert np.all(np.abs(y - poly_aggregate(*args, **options)) <= error_bound(*args, **options))


@pytest.mark.parametrize("mode", ["mean", "causal", "masked"])
def test_wrong_rope_pairing_exceeds_the_bound(mode):
    """2-D tables applied as 1-D (other pairs), or the row and column angle columns swapped."""
    x, coeff, mask = _inputs(7, 2, 300, 16, 2, "v2", mode)
    cos, sin = _rope_tables(8, 2, 300, 16)
    args = (x, 2, "v2", mode, coeff, mask)
    expected = poly_aggregate(*args, rope="2d", cos=cos, sin=sin)
    bound = error_bound(*args, rope="2d", cos=cos, sin=sin)
    swap = lambda t: np.concatenate([t[..., 4:], t[..., :4]], axis=-1)  # Q = 4
    for wrong in (poly_aggregate(*args, rope="1d", cos=cos, sin=sin),
                  poly_aggregate(*args, rope="2d", cos=swap(cos), sin=swap(sin))):
        assert np.any(np.abs(wrong - expected) > bound)


def test_dropped_frame_exceeds_the_bound():
    """Block-causal that leaves frame 0 out of every later frame's mean is caught."""
    x, coeff, _ = _inputs(9, 2, 8 * 50, 8, 2, "v2", "causal")
    args = (x, 2, "v2", "causal", coeff)
    expected, bound = poly_aggregate(*args, frame_tokens=50), error_bound(*args, frame_tokens=50)
    wrong = poly_aggregate(x[:, 50:], 2, "v2", "causal", coeff, frame_tokens=50)
    assert np.any(np.abs(wrong - expected[:, 50:]) > bound[:, 50:])


def test_block_causal_is_causal_at_frame_ends():
    """The definition, against the model's reference (pom_deploy/models/functional.py)."""
    torch = pytest.importorskip("torch")
    from pom_deploy.models.functional import _block_causal_mean

    x, coeff, _ = _inputs(10, 2, 6 * 7, 5, 3, "v2", "causal")
    f = torch.from_numpy(poly_features(x, 3, "v2", coeff))
    reference = _block_causal_mean(f, 7).numpy()
    assert np.allclose(poly_aggregate(x, 3, "v2", "causal", coeff, frame_tokens=7), reference, rtol=1e-12, atol=1e-12)
    assert np.array_equal(poly_aggregate(x, 3, "v2", "causal", coeff, frame_tokens=1), poly_aggregate(x, 3, "v2", "causal", coeff))


def test_rope_matches_the_model_rotation():
    """rope_rotate is pom_deploy/models/rope.py's rotation: 1-D, and 2-D as row then column halves."""
    torch = pytest.importorskip("torch")
    from pom_deploy.models.rope import rotate_half

    f = np.random.default_rng(11).standard_normal((2, 9, 16))
    cos, sin = _rope_tables(12, 1, 9, 16, np.float64)
    t = torch.from_numpy
    expected_1d = rotate_half(t(f), t(cos), t(sin)).numpy()
    row, col = np.split(f, 2, axis=-1)
    expected_2d = torch.cat([rotate_half(t(row), t(cos[..., :4]), t(sin[..., :4])),
                             rotate_half(t(col), t(cos[..., 4:]), t(sin[..., 4:]))], dim=-1).numpy()
    assert np.allclose(rope_rotate(f, "1d", cos, sin), expected_1d, rtol=0, atol=1e-14)
    assert np.allclose(rope_rotate(f, "2d", cos, sin), expected_2d, rtol=0, atol=1e-14)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(mode="mean", frame_tokens=4), "only with mode 'causal'"),
        (dict(mode="causal", frame_tokens=7), "multiple of frame_tokens"),
        (dict(mode="mean", rope="2d", channels=6), "divisible by 4"),
        (dict(mode="mean", rope="1d"), "cos and sin"),
    ],
)
def test_bad_rope_and_frame_arguments(options, message):
    channels = options.pop("channels", 8)
    x, coeff, _ = _inputs(13, 1, 12, channels, 2, "v2", "mean")
    with pytest.raises(ValueError, match=message):
        poly_aggregate(x, 2, "v2", coeff=coeff, **options)
