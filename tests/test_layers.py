"""Properties of the reference layers beyond the golden data."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import spread_coefficients
from tolerances import UPSTREAM
from pom_deploy.errors import ArchitectureError
from pom_deploy.exporters.verify import block_causal_mask
from pom_deploy.models import BlockCausalMask, PoMv1, PoMv2, PoMv2RoPE
from pom_deploy.models import functional as P
from pom_deploy.streaming import find_pom_layers, initial_states, stream_layers


def _layers():
    torch.manual_seed(0)
    return [
        PoMv1(16, 3, 2),
        spread_coefficients(PoMv2(16, 3, 2, 1, 4)),
        spread_coefficients(PoMv2(16, 2, 1, 2, 0, bias=True)),
        spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=256)),
    ]


@settings(max_examples=15, deadline=None)
@given(frames=st.lists(st.integers(1, 7), min_size=1, max_size=5), batch=st.integers(1, 3), which=st.integers(0, 3))
def test_streaming_equals_block_causal_forward(frames, batch, which):
    """Feeding frames one at a time == the full forward with the block-causal mask, any frame sizes."""
    layer = _layers()[which]
    x = torch.randn(batch, sum(frames), 16)
    with torch.no_grad():
        full = layer(x, mask=block_causal_mask(frames, batch))
        state, outs, start = None, [], 0
        for size in frames:
            y, state = layer.state_forward(x[:, start:start + size], state=state)
            outs.append(y)
            start += size
    torch.testing.assert_close(torch.cat(outs, 1), full, **UPSTREAM)


def test_block_causal_mask_spec_equals_dense_mask():
    layer = _layers()[1]
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask=BlockCausalMask(4)), layer(x, mask=block_causal_mask([4, 4, 4], 2)))


def test_causal_string_equals_lower_triangular_mask():
    layer = _layers()[1]
    x = torch.randn(2, 9, 16)
    tril = torch.tril(torch.ones(9, 9)).expand(2, -1, -1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, mask="causal"), layer(x, mask=tril), **UPSTREAM)


def test_horner_equals_power_series():
    x, coeff = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    a = P.v2_activation(x).unsqueeze(-1)
    powers = torch.cat([a ** k for k in range(1, 5)], dim=-1)
    torch.testing.assert_close(P.v2_features(x, coeff), (powers * coeff).sum(-1))


def test_fully_masked_row_gives_zero_not_nan():
    layer = _layers()[1]
    mask = torch.ones(2, 6)
    mask[1] = 0
    with torch.no_grad():
        y = layer(torch.randn(2, 6, 16), mask=mask)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_state_stays_float32_in_low_precision(dtype):
    layer = _layers()[1].to(dtype)
    y, state = layer.state_forward(torch.randn(2, 4, 16, dtype=dtype))
    assert y.dtype == dtype and state["mean"].dtype == torch.float32 and state["count"].dtype == torch.int64


def test_rope_streaming_continues_positions():
    """1-D RoPE in streaming == full forward at positions 0..N-1 with the block-causal mask."""
    layer = _layers()[3]
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        full = layer(x, mask=block_causal_mask([3, 7], 2), positions=torch.arange(10))
        y0, state = layer.state_forward(x[:, :3])
        y1, _ = layer.state_forward(x[:, 3:], state=state)
    torch.testing.assert_close(torch.cat([y0, y1], 1), full, **UPSTREAM)


@pytest.mark.parametrize("make,message", [
    (lambda: PoMv2(30, 2, 1, 4, 1), "divisible by n_groups"),
    (lambda: PoMv2(16, 2, 1, 1, 5), "divisible by n_sel_heads"),
    (lambda: PoMv1(0, 2, 1), "positive"),
    (lambda: PoMv2RoPE(16, 2, 1, 1, 2, rope_2d=True), "divisible by 4"),
    (lambda: PoMv2(16, 0, 1), "positive"),
])
def test_invalid_architecture_is_a_typed_error(make, message):
    with pytest.raises(ArchitectureError, match=message):
        make()


def _eager_stream(model, x, chunks):
    """``model`` run chunk by chunk with its PoM layers streaming: (outputs, final states)."""
    layers = [layer for _, layer in find_pom_layers(model)]
    states, outs, start = initial_states(layers, x.shape[0]), [], 0
    with torch.no_grad():
        for size in chunks:
            with stream_layers(layers, states) as streams:
                outs.append(model(x[:, start:start + size]))
            states, start = [s.new_state for s in streams], start + size
    return torch.cat(outs, 1), states


@settings(max_examples=10, deadline=None)
@given(chunks=st.lists(st.integers(1, 9), min_size=1, max_size=6))
def test_token_causal_stream_equals_the_model_at_any_chunking(causal_lm, chunks):
    """A model calling its layers with mask="causal": any chunking == its own full forward, and
    the final state is the whole sequence's (mean over every token, count)."""
    ids = torch.randint(0, 50, (2, sum(chunks)))
    streamed, states = _eager_stream(causal_lm, ids, chunks)
    with torch.no_grad():
        torch.testing.assert_close(streamed, causal_lm(ids), **UPSTREAM)
        _, whole = _eager_stream(causal_lm, ids, [sum(chunks)])
    for state, reference in zip(states, whole):
        assert state["count"].tolist() == [[sum(chunks)]] * 2
        torch.testing.assert_close(state["mean"], reference["mean"], **UPSTREAM)


@pytest.mark.parametrize("frames", [[1] * 6, [2, 2, 2], [6], [1, 3, 2]])
def test_frame_causal_stream_equals_the_model_at_any_chunking_of_whole_frames(video_model, frames):
    x = torch.randn(2, 8 * sum(frames), 16)
    streamed, states = _eager_stream(video_model, x, [8 * f for f in frames])
    with torch.no_grad():
        torch.testing.assert_close(streamed, video_model(x), **UPSTREAM)
    assert all(s["count"].tolist() == [[48]] * 2 for s in states)


def test_a_chunk_that_splits_a_frame_or_a_whole_sequence_mask_cannot_stream(video_model):
    with pytest.raises(ArchitectureError, match="splits a frame: block-causal streams take whole frames of 8 tokens"):
        _eager_stream(video_model, torch.randn(1, 16, 16), [4, 12])
    with pytest.raises(ArchitectureError, match="its mean takes the whole sequence"):
        _layers()[1].state_forward(torch.randn(1, 4, 16), mask=torch.ones(1, 4))
