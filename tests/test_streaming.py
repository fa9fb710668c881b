"""Step graphs and StreamingSession: chunk by chunk in onnxruntime == the full model in torch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_upstream_case, spread_coefficients
from tolerances import LAYER_ATOL, MODEL_ATOL, UPSTREAM
from pom_deploy.cli import deploy as deploy_cli
from pom_deploy.errors import ExportError, PomDeployError, RuntimeInputError
from pom_deploy.exporters import export_onnx
from pom_deploy.exporters.verify import block_causal_mask
from pom_deploy.models import BlockCausalMask, PoMv1, PoMv2, PoMv2RoPE
from pom_deploy.models.zoo import PoMBlock, create_zoo_model
from pom_deploy.runtime import Session, StreamingSession, load
from pom_deploy.spec import SPEC_FORMAT_VERSION, GraphSpec


def _stream(session, x, chunks):
    outs, start = [], 0
    for size in chunks:
        outs.append(session.step(x[:, start:start + size]))
        start += size
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("chunks", [[8] * 6, [16, 16, 16], [48], [8, 24, 16]])
def test_video_step_graph_equals_the_model_at_any_chunking_of_whole_frames(exported_video, video_model, chunks):
    """The model's own forward (block-causal over 8-token frames), not a reference of the chunks."""
    _, step = exported_video
    session = load(step.path)
    assert isinstance(session, StreamingSession) and session.chunk_multiple == 8
    assert [s.within_chunk for s in step.spec.state] == ["frame-causal"] * 2 and step.spec.dim_multiples == {"chunk": 8}
    x = torch.randn(3, sum(chunks), 16)
    with torch.no_grad():
        expected = video_model(x).numpy()
    np.testing.assert_allclose(_stream(session, x.numpy(), chunks), expected, atol=MODEL_ATOL, rtol=0)
    assert session.tokens_seen.tolist() == [sum(chunks)] * 3


def test_a_chunk_that_splits_a_frame_is_refused_in_one_line(tmp_path, capsys, exported_video):
    _, step = exported_video
    session = load(step.path)
    with pytest.raises(RuntimeInputError, match="a chunk of 4 tokens splits a frame: this model streams whole frames of 8 tokens"):
        session.step(np.zeros((1, 4, 16), np.float32))
    np.save(tmp_path / "x.npy", np.zeros((1, 16, 16), np.float32))
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "x.npy"), "--chunk", "12", "-q"]) == 1
    assert capsys.readouterr().err.strip() == "error: --chunk 12 splits a frame: this model streams whole frames of 8 tokens"
    np.save(tmp_path / "odd.npy", np.zeros((1, 20, 16), np.float32))
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "odd.npy"), "-q"]) == 1
    assert "holds 20 tokens, which splits a frame" in capsys.readouterr().err


@pytest.mark.parametrize("chunks", [[1] * 12, [1, 7, 2, 20], [30], [4, 4, 4]])
def test_token_causal_lm_streams_equal_to_the_model(exported_lm, causal_lm, chunks):
    """A prompt in one step (prefill), token by token, or unequal chunks: the model's own causal
    forward, and the same final state (each layer's mean over every token, and the count)."""
    session = load(exported_lm.path)
    assert [s.within_chunk for s in exported_lm.spec.state] == ["token-causal"] * 2 and session.chunk_multiple == 1
    ids = torch.randint(0, 50, (2, sum(chunks)))
    with torch.no_grad():
        expected = causal_lm(ids).numpy()
    np.testing.assert_allclose(_stream(session, ids.numpy(), chunks), expected, atol=MODEL_ATOL, rtol=0)
    whole = load(exported_lm.path)
    whole.step(ids.numpy())
    for layer in exported_lm.spec.state:
        np.testing.assert_allclose(session.state[layer.past_mean], whole.state[layer.past_mean], atol=MODEL_ATOL, rtol=0)
        assert session.state[layer.past_count].tolist() == [[sum(chunks)]] * 2


def test_step_export_of_a_model_that_sees_the_whole_sequence_is_refused(tmp_path, capsys):
    with pytest.raises(ExportError, match="sees the whole sequence .* --chunks-as-blocks streams each chunk as one block"):
        export_onnx(PoMv2(8, 2, 1), tmp_path / "x.onnx", step=True)
    with pytest.raises(ExportError, match=r"gets a mask tensor \(2, 64\): its mean takes the whole sequence"):
        export_onnx(_Padded(), tmp_path / "x.onnx", step=True, config=_padding_config(tmp_path))
    assert not (tmp_path / "x.onnx").exists()


class _Padded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = PoMv2(8, 2, 1)

    def forward(self, x, mask):
        return self.mixer(x, mask=mask)


def _padding_config(tmp_path):
    """A bare layer called with its (batch, tokens) padding mask input, as a config file says."""
    path = tmp_path / "padding.json"
    path.write_text(
        json.dumps(
            {
                "inputs": [{"name": "x", "shape": ["batch", "tokens", 8]}, {"name": "mask", "shape": ["batch", "tokens"], "kind": "mask"}],
                "outputs": ["y"],
                "dims": {"batch": {"min": 1, "opt": 2, "max": 4}, "tokens": {"min": 1, "opt": 64, "max": 512}},
                "stream_dim": "tokens",
            }
        )
    )
    return path


class _OwnBlockCausal(torch.nn.Module):
    """A block-causal model of one's own (issue 21): frames of 4 tokens, no export config."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(12, 16)
        self.mixer = PoMv2(16, 2, 2, 1, 4)

    def forward(self, x):
        h = self.proj(x)
        return h + self.mixer(h, mask=BlockCausalMask(4))


def test_block_causal_model_of_ones_own_exports_with_its_frame_size(tmp_path):
    model = spread_coefficients(_OwnBlockCausal())
    full = export_onnx(model, tmp_path / "own.onnx")
    assert full.verification.passed and full.spec.dim_multiples == {"tokens": 4}
    assert all(len(e.case) and int(e.case.split("tokens=")[1].split()[0]) % 4 == 0 for e in full.verification.errors)
    with pytest.raises(RuntimeInputError, match=r"axis 1 \(tokens\) is 6, not a multiple of 4"):
        load(full.path).run(x=np.zeros((1, 6, 12), np.float32))
    step = export_onnx(model, tmp_path / "own.step.onnx", step=True)
    assert step.spec.dim_multiples == {"chunk": 4} and step.verification.passed
    assert {c.case.split(" batch")[0] for c in step.verification.errors} == {  # one token frame .. whole sequence, unequal
        "chunks=[4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4]", "chunks=[16, 16, 16]", "chunks=[48]", "chunks=[4, 20, 8, 16]"}
    x = torch.randn(2, 24, 12)
    with torch.no_grad():
        np.testing.assert_allclose(_stream(load(step.path), x.numpy(), [8, 4, 12]), model(x).numpy(), atol=MODEL_ATOL, rtol=0)


def test_step_graph_of_metadata_format_1_still_streams(video_model):
    """Written before the count had a non-batch dim ((batch,)) and chunks were blocks."""
    path = Path(__file__).parent / "fixtures" / "format1" / "video_depth1.step.onnx"
    session = load(path)
    assert session.spec.format_version == 1 and session.spec.state[0].count_shape == ["batch"]
    assert session.spec.state[0].within_chunk == "whole-chunk"
    x = np.random.default_rng(5).standard_normal((2, 16, 16)).astype(np.float32)
    first = _stream(session, x, [8, 8])
    assert session.tokens_seen.tolist() == [16, 16] and session.state["past.0.count"].shape == (2,)
    model = create_zoo_model("video_pom", seed=0, depth=1)
    with torch.no_grad():  # frames of 8, one per step: equal to the model
        np.testing.assert_allclose(first, model(torch.from_numpy(x)).numpy(), atol=MODEL_ATOL, rtol=0)


@pytest.mark.parametrize("name", ["v1_d2_e1_bias", "v2_d3_e2_h4", "v2_d2_e1_g2_h1_bias"])
def test_equal_chunks_equal_upstream_state_forward(tmp_path, name):
    """The step graph of a layer loaded with upstream weights reproduces upstream's frame loop."""
    case, data, layer = load_upstream_case(name)
    index = next(i for i, c in enumerate(case["calls"]) if c["method"] == "state_forward" and len(set(c["frames"])) == 1)
    session = load(export_onnx(layer, tmp_path / "layer.step.onnx", step=True, chunks_as_blocks=True).path)
    for f in range(len(case["calls"][index]["frames"])):
        y = session.step(data[f"call{index}.x{f}"])
        np.testing.assert_allclose(y, data[f"call{index}.y{f}"], **UPSTREAM)
        np.testing.assert_allclose(session.state["past.0.mean"], data[f"call{index}.h{f}"], **UPSTREAM)


class _ResidualStack(torch.nn.Module):
    """Not a zoo model: the step exporter finds its PoM layers in the module tree."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([PoMBlock(PoMv1(16, 2, 1), 16), PoMBlock(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=512), 16)])

    def forward(self, x, mask=None):
        for block in self.blocks:
            x = block(x, mask=mask)
        return x


def test_chunks_as_blocks_opt_in_streams_a_model_that_sees_the_whole_sequence(tmp_path):
    """Any model's PoM layers get state I/O; without a mask, the opt-in keeps each chunk one block."""
    model = spread_coefficients(_ResidualStack())
    result = export_onnx(model, tmp_path / "stack.step.onnx", step=True, chunks_as_blocks=True)
    assert [s.module for s in result.spec.state] == ["blocks.0.mixer", "blocks.1.mixer"]
    assert [s.channels for s in result.spec.state] == [32, 32]
    assert [s.within_chunk for s in result.spec.state] == ["whole-chunk"] * 2
    assert result.spec.state[1].mean_shape == ["batch", 1, 32] and result.spec.state[1].initial == "zeros"
    assert [t.shape for t in result.spec.inputs if t.name.startswith("past.1.")] == [["batch", 1, 32], ["batch", 1]]
    session = load(result.path)
    chunks = [5, 1, 9, 4]
    x = torch.randn(2, sum(chunks), 16)
    with torch.no_grad():  # RoPE positions continue from the tokens seen: 0..N-1 over the whole stream
        expected = model(x, mask=block_causal_mask(chunks, 2)).numpy()
    np.testing.assert_allclose(_stream(session, x.numpy(), chunks), expected, atol=MODEL_ATOL, rtol=0)


def test_fused_step_graph_agrees(tmp_path, video_model, exported_video):
    _, plain = exported_video
    fused = export_onnx(video_model, tmp_path / "fused.step.onnx", step=True, fused_ops=True)
    assert fused.spec.fused_ops
    x = np.random.default_rng(0).standard_normal((2, 24, 16)).astype(np.float32)
    np.testing.assert_allclose(_stream(load(fused.path), x, [8, 8, 8]), _stream(load(plain.path), x, [8, 8, 8]), atol=MODEL_ATOL, rtol=0)


def test_resumed_stream_equals_uninterrupted(tmp_path, exported_video):
    _, step = exported_video
    x = np.random.default_rng(1).standard_normal((2, 40, 16)).astype(np.float32)
    whole = _stream(load(step.path), x, [8] * 5)
    first = load(step.path)
    head = _stream(first, x[:, :16], [8, 8])
    first.save_state(tmp_path / "state.npz")
    resumed = load(step.path)
    resumed.load_state(tmp_path / "state.npz")
    tail = _stream(resumed, x[:, 16:], [8, 8, 8])
    np.testing.assert_array_equal(np.concatenate([head, tail], 1), whole)


def test_independent_streams_and_reset_of_one_row(exported_video):
    _, step = exported_video
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((1, 16, 16), dtype=np.float32), rng.standard_normal((1, 16, 16), dtype=np.float32)
    session = load(step.path)
    both = _stream(session, np.concatenate([a, b]), [8, 8])
    np.testing.assert_allclose(both[0:1], _stream(load(step.path), a, [8, 8]), atol=MODEL_ATOL, rtol=0)
    session.reset(row=1)
    assert session.tokens_seen.tolist() == [16, 0]
    again = session.step(np.concatenate([a[:, :8], b[:, :8]]))
    np.testing.assert_allclose(again[1:], both[1:, :8], atol=MODEL_ATOL, rtol=0)  # row 1 restarted
    session.reset()
    assert session.tokens_seen.size == 0


def test_bad_inputs_are_refused_before_onnxruntime(exported_video):
    _, step = exported_video
    session = load(step.path)
    x = np.zeros((2, 8, 16), np.float32)
    with pytest.raises(RuntimeInputError, match="must be float32"):
        session.step(x.astype(np.float64))
    with pytest.raises(RuntimeInputError, match="axis 2 must be 16"):
        session.step(np.zeros((2, 8, 15), np.float32))
    with pytest.raises(RuntimeInputError, match="unknown input 'style'"):
        session.step(x, style=x)
    session.step(x)
    with pytest.raises(RuntimeInputError, match="batch 3 but the session carries 2"):
        session.step(np.zeros((3, 8, 16), np.float32))
    state = session.state
    bad = dict(state)
    bad["past.0.mean"] = bad["past.0.mean"][:, :, :5]
    with pytest.raises(RuntimeInputError, match="past.0.mean"):
        session.state = bad
    with pytest.raises(RuntimeInputError, match="row 5 is outside"):
        session.reset(row=5)


def test_an_empty_chunk_is_refused_and_leaves_the_stream_untouched(exported_video):
    """A chunk of 0 tokens would make the state's mean 0/0: NaN for every later step of the stream."""
    _, step = exported_video
    chunks = np.random.default_rng(4).standard_normal((2, 1, 8, 16)).astype(np.float32)
    session, reference = load(step.path), load(step.path)
    session.step(chunks[0])
    for empty in (np.zeros((1, 0, 16), np.float32), np.zeros((0, 8, 16), np.float32)):
        with pytest.raises(RuntimeInputError, match="a step needs at least one token"):
            session.step(empty)
    reference.step(chunks[0])
    np.testing.assert_array_equal(session.step(chunks[1]), reference.step(chunks[1]))


def test_state_from_another_model_is_refused(tmp_path, exported_video):
    _, step = exported_video
    other = export_onnx(spread_coefficients(PoMv2(16, 2, 2, 1, 4)), tmp_path / "other.step.onnx", step=True, chunks_as_blocks=True)
    donor = load(other.path)
    donor.step(np.zeros((1, 4, 16), np.float32))
    with pytest.raises(RuntimeInputError, match="another model"):
        load(step.path).state = donor.state


def test_full_graph_is_not_a_stream(exported_video):
    full, _ = exported_video
    session = load(full.path)
    assert isinstance(session, Session)
    with pytest.raises(RuntimeInputError, match="not a pom-deploy step graph"):
        StreamingSession(session.backend)
    with pytest.raises(RuntimeInputError, match="missing input 'tokens'"):
        session.run()


def test_step_export_needs_a_stream(tmp_path):
    with pytest.raises(ExportError, match="no token dim to stream over"):
        export_onnx(PoMv2(8, 2, 1), tmp_path / "x.onnx", step=True, cross=True)


def test_run_command_streams_a_file(tmp_path, capsys, exported_video, video_model):
    _, step = exported_video
    x = np.random.default_rng(3).standard_normal((1, 40, 16)).astype(np.float32)
    np.save(tmp_path / "frames.npy", x[0])  # (tokens, dim): a single stream
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "frames.npy"), "-o", str(tmp_path / "out.npy"), "-q"]) == 0
    with torch.no_grad():
        expected = video_model(torch.from_numpy(x)).numpy()  # chunks default to the model's 8-token frames
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=MODEL_ATOL, rtol=0)
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "frames.npy"), "-o", str(tmp_path / "out.npy")]) == 1
    assert "--force" in capsys.readouterr().err
    np.save(tmp_path / "bad.npy", np.zeros((4, 5, 6, 7), np.float32))
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "bad.npy")]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    np.save(tmp_path / "empty.npy", np.zeros((0, 16), np.float32))
    assert deploy_cli.main(["run", str(step.path), "--input", str(tmp_path / "empty.npy"), "-o", str(tmp_path / "empty_out.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no tokens to stream" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "empty_out.npy").exists()


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert deploy_cli.main(["demo", "--dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime, step graph" in out and (tmp_path / "demo" / "model.step.onnx").exists()
    assert deploy_cli.main(["demo", "--dir", str(tmp_path / "demo")]) == 1  # no overwrite without --force
    meta = json.loads(next(p.value for p in __import__("onnx").load(str(tmp_path / "demo" / "model.onnx")).metadata_props))
    assert meta["architecture"]["name"] == "video_pom"


def test_state_is_fed_back_through_io_binding(exported_video):
    """Between steps the state stays as onnxruntime values (device memory with a GPU provider)."""
    import onnxruntime as ort

    _, step = exported_video
    session = load(step.path)
    session.step(np.zeros((1, 8, 16), np.float32))
    assert session._state and all(isinstance(v, ort.OrtValue) for v in session._state.values())
    assert session.state["past.0.count"].tolist() == [[8]]  # host copies on request


@pytest.mark.parametrize("rope_2d", [False, True], ids=["rope1d", "rope2d"])
def test_bare_rope_layer_streams(tmp_path, rope_2d):
    """1-D positions continue from the tokens seen (no positions input); 2-D ones are given per chunk."""
    layer = spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=64, max_h=8, max_w=8, rope_2d=rope_2d))
    session = load(export_onnx(layer, tmp_path / "rope.step.onnx", step=True, chunks_as_blocks=True).path)
    assert ("positions_hw" in [t.name for t in session.spec.data_inputs]) == rope_2d
    chunks, x = [3, 9, 4], torch.randn(2, 16, 16)
    grid = torch.randint(0, 8, (16, 2))
    outs, start = [], 0
    for size in chunks:
        extra = {"positions_hw": grid[start:start + size].numpy()} if rope_2d else {}
        outs.append(session.step(x[:, start:start + size].numpy(), **extra))
        start += size
    positions = {"positions_hw": grid} if rope_2d else {"positions": torch.arange(16)}
    with torch.no_grad():
        expected = layer(x, mask=block_causal_mask(chunks, 2), **positions).numpy()
    np.testing.assert_allclose(np.concatenate(outs, 1), expected, atol=LAYER_ATOL, rtol=0)
    if not rope_2d:  # past the layer's 64 positions: one clear error, not onnxruntime's traceback
        for _ in range(4):  # 16 tokens seen, 64 positions: the 4th step reaches position 64
            try:
                session.step(np.zeros((2, 16, 16), np.float32))
            except RuntimeInputError as exc:
                assert "onnxruntime failed" in str(exc)
                break
        else:
            pytest.fail("stepping past max_seq_len did not fail")


def test_streaming_session_opens_a_path(exported_video):
    _, step = exported_video
    stream = StreamingSession(step.path)
    assert stream.step(np.zeros((1, 8, 16), np.float32)).shape == (1, 8, 16)
    with pytest.raises(RuntimeInputError, match=r"pom_deploy.load\(path\)"):
        StreamingSession(42)


def _saved_stream(tmp_path, step):
    stream = load(step.path)
    stream.step(np.random.default_rng(0).standard_normal((1, 8, 16)).astype(np.float32))
    stream.save_state(tmp_path / "s.npz")
    return tmp_path / "s.npz"


def test_damaged_state_file_is_refused(tmp_path, exported_video):
    """A changed value with the digest left as saved (a CRC-consistent file), and a flipped byte."""
    _, step = exported_video
    path = _saved_stream(tmp_path, step)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["past.0.mean"] = arrays["past.0.mean"] + np.float32(1e-3)
    np.savez(tmp_path / "edited.npz", **arrays)
    with pytest.raises(RuntimeInputError, match="corrupted: its arrays do not match"):
        load(step.path).load_state(tmp_path / "edited.npz")
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    (tmp_path / "flipped.npz").write_bytes(bytes(data))
    with pytest.raises(RuntimeInputError, match="flipped.npz"):
        load(step.path).load_state(tmp_path / "flipped.npz")


def test_state_file_without_digest_resumes_with_a_warning(tmp_path, exported_video):
    from pom_deploy.errors import PomDeployWarning
    from pom_deploy.runtime.session import STATE_DIGEST_KEY

    _, step = exported_video
    path = _saved_stream(tmp_path, step)
    with np.load(path) as data:
        arrays = {k: v for k, v in data.items() if k != STATE_DIGEST_KEY}
    np.savez(tmp_path / "older.npz", **arrays)
    resumed = load(step.path)
    with pytest.warns(PomDeployWarning, match="no state digest"):
        resumed.load_state(tmp_path / "older.npz")
    np.testing.assert_array_equal(resumed.state["past.0.mean"], arrays["past.0.mean"])


def test_frame_causal_step_graph_needs_no_cumsum(exported_video, exported_lm):
    """Frames x frames triangular product for block-causal chunks (TensorRT before 10.8 imports
    CumSum as a loop); the token-causal step keeps one CumSum per layer (docs/streaming.md)."""
    import onnx

    ops = lambda path: [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "CumSum" not in ops(exported_video[1].path)
    assert ops(exported_lm.path).count("CumSum") == 2


def test_metadata_of_a_newer_format_is_refused_in_one_line():
    """A file written by a newer pom-deploy says so instead of failing on an unknown field."""
    newer = {"format_version": SPEC_FORMAT_VERSION + 1, "kind": "step", "inputs": [], "outputs": [], "new_field": 1}
    with pytest.raises(PomDeployError, match=f"format {SPEC_FORMAT_VERSION + 1}, newer than this pom-deploy reads"):
        GraphSpec.from_json(json.dumps(newer))
