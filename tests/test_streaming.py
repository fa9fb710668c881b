"""Step graphs and StreamingSession: chunk by chunk in onnxruntime == the full model in torch."""

import json

import numpy as np
import pytest
import torch

from conftest import load_upstream_case, spread_coefficients
from tolerances import LAYER_ATOL, MODEL_ATOL, UPSTREAM
from pom_deploy.cli import deploy as deploy_cli
from pom_deploy.errors import ExportError, RuntimeInputError
from pom_deploy.exporters import export_onnx
from pom_deploy.exporters.verify import block_causal_mask
from pom_deploy.models import PoMv1, PoMv2, PoMv2RoPE
from pom_deploy.models.zoo import PoMBlock
from pom_deploy.runtime import Session, StreamingSession, load


def _stream(session, x, chunks):
    outs, start = [], 0
    for size in chunks:
        outs.append(session.step(x[:, start:start + size]))
        start += size
    return np.concatenate(outs, axis=1)


@pytest.mark.parametrize("chunks", [[8, 8, 8, 8], [8, 3, 17, 1, 11]])
def test_video_step_graph_equals_block_causal_forward(exported_video, video_model, chunks):
    _, step = exported_video
    session = load(step.path)
    assert isinstance(session, StreamingSession)
    x = torch.randn(3, sum(chunks), 16)
    with torch.no_grad():
        expected = video_model(x, mask=block_causal_mask(chunks, 3)).numpy()
    np.testing.assert_allclose(_stream(session, x.numpy(), chunks), expected, atol=MODEL_ATOL, rtol=0)
    assert session.tokens_seen.tolist() == [sum(chunks)] * 3


@pytest.mark.parametrize("name", ["v1_d2_e1_bias", "v2_d3_e2_h4", "v2_d2_e1_g2_h1_bias"])
def test_equal_chunks_equal_upstream_state_forward(tmp_path, name):
    """The step graph of a layer loaded with upstream weights reproduces upstream's frame loop."""
    case, data, layer = load_upstream_case(name)
    index = next(i for i, c in enumerate(case["calls"]) if c["method"] == "state_forward" and len(set(c["frames"])) == 1)
    session = load(export_onnx(layer, tmp_path / "layer.step.onnx", step=True).path)
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


def test_any_block_causal_model_gets_state_io(tmp_path):
    model = spread_coefficients(_ResidualStack())
    result = export_onnx(model, tmp_path / "stack.step.onnx", step=True)
    assert [s.module for s in result.spec.state] == ["blocks.0.mixer", "blocks.1.mixer"]
    assert [s.channels for s in result.spec.state] == [32, 32]
    assert result.spec.state[1].mean_shape == ["batch", 1, 32] and result.spec.state[1].initial == "zeros"
    assert [t.shape for t in result.spec.inputs if t.name.startswith("past.1.")] == [["batch", 1, 32], ["batch"]]
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


def test_state_from_another_model_is_refused(tmp_path, exported_video):
    _, step = exported_video
    other = export_onnx(spread_coefficients(PoMv2(16, 2, 2, 1, 4)), tmp_path / "other.step.onnx", step=True)
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
    assert session.state["past.0.count"].tolist() == [8]  # host copies on request


@pytest.mark.parametrize("rope_2d", [False, True], ids=["rope1d", "rope2d"])
def test_bare_rope_layer_streams(tmp_path, rope_2d):
    """1-D positions continue from the tokens seen (no positions input); 2-D ones are given per chunk."""
    layer = spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=64, max_h=8, max_w=8, rope_2d=rope_2d))
    session = load(export_onnx(layer, tmp_path / "rope.step.onnx", step=True).path)
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
