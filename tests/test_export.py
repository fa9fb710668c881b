"""pom-export: zoo models and every mask kind export, run in onnxruntime and match PyTorch."""

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from conftest import spread_coefficients
from tolerances import FP16_RELATIVE_TO_PEAK, LAYER_ATOL, MODEL_ATOL
import pom_deploy
from pom_deploy import save_checkpoint
from pom_deploy.cli import deploy as deploy_cli
from pom_deploy.cli import export as export_cli
from pom_deploy.errors import ExportError, RuntimeInputError, VerificationError
from pom_deploy.exporters import export_onnx
from pom_deploy.models import PoMv1, PoMv2, PoMv2RoPE
from pom_deploy.models.zoo import create_zoo_model
from pom_deploy.onnx_graph import read_spec
from pom_deploy.spec import METADATA_KEY
from pom_deploy.streaming import find_pom_layers


def _ort(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, **feeds):
    return session.run(None, {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in feeds.items()})[0]


def test_video_full_graph_runs_at_other_sizes(exported_video, video_model):
    full, _ = exported_video
    assert full.verification.passed and len(full.verification.errors) >= 3
    session = _ort(full.path)
    for batch, frames in ((1, 1), (3, 7), (2, 31)):
        x = torch.randn(batch, frames * video_model.frame_tokens, 16)
        with torch.no_grad():
            expected = video_model(x).numpy()
        np.testing.assert_allclose(_run(session, tokens=x), expected, atol=MODEL_ATOL, rtol=0)


@pytest.fixture(scope="module")
def exported_dit(tmp_path_factory):
    model = create_zoo_model("dit_pom", seed=0)
    return model, export_onnx(model, tmp_path_factory.mktemp("dit") / "dit.onnx")


def test_dit_runs_at_other_sizes(exported_dit):
    model, result = exported_dit
    session = _ort(result.path)
    for batch, height, width in ((1, 2, 2), (3, 10, 6), (2, 16, 12)):
        image, t, label = torch.randn(batch, 4, height, width), torch.rand(batch) * 1000, torch.randint(0, 10, (batch,))
        with torch.no_grad():
            expected = model(image, t, label).numpy()
        np.testing.assert_allclose(_run(session, image=image, timestep=t, class_label=label), expected, atol=MODEL_ATOL, rtol=0)


def test_dit_runtime_refuses_inputs_the_graph_cannot_take_as_pytorch_does(exported_dit):
    """A side the patch does not divide (PyTorch crops, the graph fails in a Reshape) and a class
    label outside [0, classes) (PyTorch raises, ONNX Gather wraps -1 to the last class): one
    line each, before onnxruntime runs."""
    _, result = exported_dit
    session = pom_deploy.load(result.path)
    image, timestep, label = np.zeros((1, 4, 8, 8), np.float32), np.zeros((1,), np.float32), np.zeros((1,), np.int64)
    with pytest.raises(RuntimeInputError, match=r"'image' axis 2 \(height\) is 7, not a multiple of 2"):
        session.run(image=np.zeros((1, 4, 7, 8), np.float32), timestep=timestep, class_label=label)
    for bad in (-1, 10):
        with pytest.raises(RuntimeInputError, match=rf"'class_label' holds {bad}, outside its range \[0, 10\)"):
            session.run(image=image, timestep=timestep, class_label=np.array([bad], np.int64))
    assert session.run(image=image, timestep=timestep, class_label=np.array([9], np.int64))["noise"].shape == (1, 4, 8, 8)


LAYERS = {
    "v1": lambda: PoMv1(16, 3, 2),
    "v2": lambda: spread_coefficients(PoMv2(16, 3, 2, 1, 4)),
    "v2-grouped": lambda: spread_coefficients(PoMv2(16, 2, 2, 2, 0, bias=True)),
    "rope1d": lambda: spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=128)),
    "rope2d": lambda: spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_h=8, max_w=8, rope_2d=True)),
}
LAYER_CASES = [
    ("v1", "none", False), ("v1", "causal", False), ("v1", "padding", True), ("v1", "full", True),
    ("v2", "none", False), ("v2", "causal", False), ("v2", "padding", False), ("v2", "full", False),
    ("v2", "none", True), ("v2", "padding", True), ("v2", "full", True),
    ("v2-grouped", "causal", False), ("v2-grouped", "none", True),
    ("rope1d", "none", False), ("rope1d", "causal", False), ("rope1d", "full", False), ("rope2d", "none", False),
]


def _layer_inputs(layer, mask, cross, batch, tokens, context):
    n = context if cross else tokens
    feeds = {"xq": torch.randn(batch, tokens, 16)}
    if cross:
        feeds["xc"] = torch.randn(batch, context, 16)
    if mask in ("padding", "full"):
        m = (torch.rand((batch, n) if mask == "padding" else (batch, tokens, n)) < 0.6).float()
        m[..., 0] = 1
        feeds["mask"] = m
    if isinstance(layer, PoMv2RoPE):
        if layer.rope_2d:
            feeds["positions_hw"] = torch.randint(0, 8, (tokens, 2))
        else:
            feeds["positions"] = torch.randperm(128)[:tokens]
    return feeds


def _call_layer(layer, mask, feeds):
    kwargs = {k: v for k, v in feeds.items() if k.startswith("positions")}
    layer_mask = feeds.get("mask", "causal" if mask == "causal" else None)
    return layer(feeds["xq"], feeds.get("xc"), mask=layer_mask, **kwargs)


@pytest.mark.parametrize("kind,mask,cross", LAYER_CASES, ids=[f"{k}-{m}{'-cross' if c else ''}" for k, m, c in LAYER_CASES])
def test_layer_mask_kinds_match_torch(tmp_path, kind, mask, cross):
    torch.manual_seed(0)
    layer = LAYERS[kind]().eval()
    result = export_onnx(layer, tmp_path / "layer.onnx", mask=mask, cross=cross)
    assert result.verification.passed
    session = _ort(result.path)
    for batch, tokens, context in ((2, 11, 13), (1, 40, 7)):
        feeds = _layer_inputs(layer, mask, cross, batch, tokens, context)
        with torch.no_grad():
            expected = _call_layer(layer, mask, feeds).numpy()
        np.testing.assert_allclose(_run(session, **feeds), expected, atol=LAYER_ATOL, rtol=0)
    # docs/tensorrt.md's CumSum table: one for a token-causal layer (with or without RoPE), none otherwise
    assert _ops(result.path).count("CumSum") == (1 if mask == "causal" else 0)


def _relative_to_peak(actual, expected):
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())


def test_fp16_video_matches_within_one_percent(tmp_path, video_model):
    result = export_onnx(video_model, tmp_path / "v16.onnx", precision="fp16")
    session = _ort(result.path)
    assert session.get_inputs()[0].type == "tensor(float16)"
    x = torch.randn(2, 6 * video_model.frame_tokens, 16)
    with torch.no_grad():
        expected = video_model(x).numpy()
    assert _relative_to_peak(_run(session, tokens=x.half()), expected) <= FP16_RELATIVE_TO_PEAK


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_fp16_accumulates_in_float32_over_65536_tokens(tmp_path, mask):
    """Against a float64 reference at 65,536 tokens; a naive fp16 reduction loses it."""
    torch.manual_seed(0)
    layer = spread_coefficients(PoMv2(8, 2, 1, 1, 0))
    with torch.no_grad():
        layer.qc_proj.weight.mul_(3)
        layer.qc_proj.weight[:8].abs_()  # positive projected context: the mean cannot cancel out
    result = export_onnx(layer, tmp_path / "l16.onnx", precision="fp16", mask=mask, verify=False)
    x = torch.rand(1, 65536, 8) + 0.5
    ref64 = PoMv2(8, 2, 1, 1, 0).double()
    ref64.load_state_dict(layer.state_dict())
    with torch.no_grad():
        expected = ref64(x.double(), mask=None if mask == "none" else "causal").numpy()
    actual = _run(_ort(result.path), xq=x.half())
    assert _relative_to_peak(actual, expected) <= FP16_RELATIVE_TO_PEAK
    # The same mean computed by a naive fp16 reduction drifts far more:
    with torch.no_grad():
        h, s = layer.half()._projections(x.half(), x.half())
        f = layer._features(h).half()  # (computed in float32) rounded to float16, for a float16 reduction
        naive = (
            f.cumsum(1) / torch.arange(1, f.shape[1] + 1, dtype=torch.float16).view(1, -1, 1)
            if mask == "causal"
            else f.sum(1, keepdim=True) / f.shape[1]
        )
        exact = layer.float()._features(h.float()).double()
        exact = exact.cumsum(1) / torch.arange(1, f.shape[1] + 1).view(1, -1, 1) if mask == "causal" else exact.mean(1, keepdim=True)
    naive_error = float(((naive.double() - exact).abs().max() / exact.abs().max()))
    assert not naive_error <= 5e-2  # (an fp16 running sum past 65504 overflows: inf/nan fail this too)


def test_bf16_exports_and_says_why_it_cannot_verify_on_cpu(tmp_path, video_model):
    result = export_onnx(video_model, tmp_path / "b.onnx", precision="bf16", verify=False)
    assert result.opset >= 22
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    # the step graph (one context vector per stream), fused: every op takes bf16 (checker passed)
    step = export_onnx(video_model, tmp_path / "b.step.onnx", precision="bf16", step=True, fused_ops=True, verify=False)
    assert step.spec.fused_ops and step.spec.precision == "bf16"
    with pytest.raises(ExportError, match="--no-verify"):
        export_onnx(video_model, tmp_path / "b2.onnx", precision="bf16")
    assert not (tmp_path / "b2.onnx").exists()


def test_metadata_round_trips(exported_video, video_model):
    full, step = exported_video
    for result in (full, step):
        spec = read_spec(result.path)
        assert spec == result.spec
        assert spec.architecture == {"name": "video_pom", "config": video_model.config()}
        assert spec.inputs[0].shape[:2] == ["batch", "tokens" if result is full else "chunk"]
        assert spec.inputs[0].min_shape[0] == 1 and spec.inputs[0].max_shape[0] == 64
    assert full.spec.kind == "full" and step.spec.kind == "step"
    onnx.checker.check_model(str(full.path), full_check=True)


@pytest.mark.parametrize("mask", ["none", "causal"])
def test_graph_is_clean(tmp_path, mask):
    """No (B, N, C, degree) tensor (Horner), shapes inferred, constants folded."""
    layer = spread_coefficients(PoMv2(16, 3, 2, 1, 0))  # (multi-head selection has a 4-D head view by design)
    result = export_onnx(layer, tmp_path / "l.onnx", mask=mask, verify=False)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(result.path)), strict_mode=True)
    ranks = [len(v.type.tensor_type.shape.dim) for v in model.graph.value_info]
    assert len(ranks) > 10 and max(ranks) == 3
    constants = {i.name for i in model.graph.initializer}
    foldable = [n.op_type for n in model.graph.node if n.input and all(i in constants for i in n.input)]
    assert foldable == []


def test_fused_layer_exports_match_pytorch(tmp_path):
    """One PolyAggregate node per layer, in every mode, equal to PyTorch (and so, within twice the
    tolerance, to the decomposed exports, which test_layer_mask_kinds_match_torch checks)."""
    layer = spread_coefficients(PoMv2(16, 3, 2, 1, 4))
    x = torch.randn(2, 21, 16)
    mask = (torch.rand(2, 21) < 0.5).float()
    mask[:, 0] = 1
    for kind in ("none", "causal", "padding"):
        fused = export_onnx(layer, tmp_path / f"{kind}.fused.onnx", mask=kind, fused_ops=True)
        model = onnx.load(str(fused.path))
        nodes = [n for n in model.graph.node if n.op_type == "PolyAggregate"]
        assert len(nodes) == 1 and nodes[0].domain == "pom_deploy" and nodes[0].overload
        assert {(f.name, f.overload) for f in model.functions} == {("PolyAggregate", nodes[0].overload)}
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
        assert attrs["plugin_version"] == b"1" and attrs["degree"] == 3 and attrs["variant"] == b"v2"
        assert "CumSum" not in _ops(fused.path) and _function_cumsums(fused.path) == {nodes[0].overload: int(kind == "causal")}
        feeds = {"xq": x} if kind != "padding" else {"xq": x, "mask": mask}
        with torch.no_grad():
            expected = _call_layer(layer, kind, feeds).numpy()
        np.testing.assert_allclose(_run(_ort(fused.path), **feeds), expected, atol=LAYER_ATOL, rtol=0)


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _function_cumsums(path) -> dict[str, int]:
    """CumSum nodes in each function body (by overload) of an exported file."""
    return {f.overload: [n.op_type for n in f.node].count("CumSum") for f in onnx.load(str(path)).functions}


@pytest.mark.parametrize("name,step", [("video_pom", False), ("video_pom", True), ("dit_pom", False)])
def test_fused_fp16_zoo_models_are_one_node_per_pom_layer_and_no_cumsum(tmp_path, name, step):
    """Block-causal frames (video) and 2-D RoPE (DiT) are fused too; nothing is left decomposed."""
    model = create_zoo_model(name)
    result = export_onnx(model, tmp_path / "m.onnx", precision="fp16", step=step, fused_ops=True)
    onnx.checker.check_model(str(result.path), full_check=True)
    ops = _ops(result.path)
    assert ops.count("PolyAggregate") == len(find_pom_layers(model)) == 2 and "CumSum" not in ops
    assert set(_function_cumsums(result.path).values()) == {0}  # nor do their function bodies
    assert result.spec.fused_ops and result.spec.decomposed_layers == []
    nodes = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "PolyAggregate"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    # the step graph mixes each chunk frame-causally too (whole frames of 8 tokens)
    frames = {"frame_tokens": 8}
    expected = {("video_pom", False): frames, ("video_pom", True): frames, ("dit_pom", False): {"rope": b"2d"}}[name, step]
    assert {k: attrs[k] for k in ("frame_tokens", "rope") if k in attrs} == expected
    if name == "dit_pom":
        assert len(nodes[0].input) == 4  # x, coeff, cos, sin
        session = _ort(result.path)
        for batch, height, width in ((1, 2, 2), (3, 10, 6)):
            image, t, label = torch.randn(batch, 4, height, width), torch.rand(batch) * 1000, torch.randint(0, 10, (batch,))
            with torch.no_grad():
                expected = model.double()(image.double(), t, label).numpy()
            actual = _run(session, image=image.half(), timestep=t.half(), class_label=label)
            assert _relative_to_peak(actual, expected) <= FP16_RELATIVE_TO_PEAK
    elif not step:
        session = _ort(result.path)
        for batch, frames in ((1, 1), (2, 7)):
            x = torch.randn(batch, frames * model.frame_tokens, 16)
            with torch.no_grad():
                expected = model.double()(x.double()).numpy()
            assert _relative_to_peak(_run(session, tokens=x.half()), expected) <= FP16_RELATIVE_TO_PEAK


@pytest.mark.parametrize("rope_2d,mask", [(False, "none"), (False, "causal"), (False, "padding"), (True, "none"), (True, "causal"),
                                          (True, "padding")])
def test_fused_rope_layers_match_pytorch(tmp_path, rope_2d, mask):
    """Against PyTorch (and so, within twice the tolerance, against the decomposed export, which
    test_layer_mask_kinds_match_torch checks against PyTorch for the same RoPE layers)."""
    layer = spread_coefficients(PoMv2RoPE(16, 3, 2, 1, 4, max_seq_len=64, max_h=8, max_w=8, rope_2d=rope_2d)).eval()
    fused = export_onnx(layer, tmp_path / "fused.onnx", mask=mask, fused_ops=True)
    onnx.checker.check_model(str(fused.path), full_check=True)
    assert _ops(fused.path).count("PolyAggregate") == 1 and fused.spec.decomposed_layers == []
    assert "CumSum" not in _ops(fused.path) and list(_function_cumsums(fused.path).values()) == [int(mask == "causal")]
    key = "positions_hw" if rope_2d else "positions"
    session = _ort(fused.path)
    for batch, tokens in ((1, 3), (2, 21), (3, 40)):
        x = torch.randn(batch, tokens, 16)
        positions = torch.randint(0, 8, (tokens, 2)) if rope_2d else torch.randperm(64)[:tokens]
        feeds = {"xq": x, key: positions}
        call = {key: positions}
        if mask == "padding":
            feeds["mask"] = (torch.rand(batch, tokens) < 0.5).float()
            feeds["mask"][:, 0] = 1
            call["mask"] = feeds["mask"]
        with torch.no_grad():
            expected = layer(x, mask="causal" if mask == "causal" else call.pop("mask", None), **call).numpy()
        np.testing.assert_allclose(_run(session, **feeds), expected, atol=LAYER_ATOL, rtol=0)


def test_cumsum_counts_are_those_of_the_tensorrt_docs(exported_video, exported_dit):
    """docs/tensorrt.md's CumSum table, without fused ops: none in block-causal frames (video full),
    step graphs or the DiT. The rest of the table is checked where those graphs are exported: one
    per token-causal layer, with or without RoPE, and none in the other modes
    (test_layer_mask_kinds_match_torch); with fused ops none in any graph, one in the token-causal
    function bodies and none in the others (test_fused_layer_exports_match_pytorch,
    test_fused_rope_layers_match_pytorch, test_fused_fp16_zoo_models_are_one_node_per_pom_layer_and_no_cumsum)."""
    full, step = exported_video
    assert "CumSum" not in _ops(full.path) + _ops(step.path) + _ops(exported_dit[1].path)


def test_fused_block_causal_and_rope_step_graphs_match_pytorch(tmp_path):
    """Block-causal frames of 4 tokens (degree 3) in a full graph at several sizes; a causal 1-D
    RoPE layer's step graph (token-causal in a chunk, positions continue from the count; verified by
    the export against the layer's own causal forward) is fused."""
    video = create_zoo_model("video_pom", frame_tokens=4, degree=3)
    full = export_onnx(video, tmp_path / "v.onnx", fused_ops=True)
    assert _ops(full.path).count("PolyAggregate") == 2 and "CumSum" not in _ops(full.path)
    session = _ort(full.path)
    for batch, frames in ((1, 1), (3, 5), (2, 13)):
        x = torch.randn(batch, 4 * frames, 16)
        with torch.no_grad():
            np.testing.assert_allclose(_run(session, tokens=x), video(x).numpy(), atol=MODEL_ATOL, rtol=0)
    layer = spread_coefficients(PoMv2RoPE(16, 2, 2, 1, 4, max_seq_len=4096)).eval()
    step = export_onnx(layer, tmp_path / "r.step.onnx", step=True, fused_ops=True, mask="causal")
    assert step.verification.passed and _ops(step.path).count("PolyAggregate") == 1 and step.spec.decomposed_layers == []


def test_fused_export_reports_the_layers_it_leaves_decomposed(tmp_path, capsys):
    dense = export_onnx(spread_coefficients(PoMv2(16, 2, 2, 1, 4)), tmp_path / "d.onnx", mask="full", fused_ops=True)
    assert dense.verification.passed and "PolyAggregate" not in _ops(dense.path) and not dense.spec.fused_ops
    assert [d["module"] for d in dense.spec.decomposed_layers] == ["layer"]
    assert "(B, T, N) mask" in dense.spec.decomposed_layers[0]["reason"]
    assert read_spec(dense.path).decomposed_layers == dense.spec.decomposed_layers
    save_checkpoint(create_zoo_model("dit_pom", degree=9), tmp_path / "dit9.pt")
    assert export_cli.main([str(tmp_path / "dit9.pt"), "--fused-ops", "--no-verify", "-o", str(tmp_path / "dit9.onnx")]) == 0
    out = capsys.readouterr().out
    assert "not fused" in out and "blocks.0.mixer" in out and "blocks.1.mixer" in out and "degree 9 > 8" in out
    assert [d["module"] for d in read_spec(tmp_path / "dit9.onnx").decomposed_layers] == ["blocks.0.mixer", "blocks.1.mixer"]
    v1 = export_onnx(PoMv1(8, 2, 1), tmp_path / "v1.onnx", fused_ops=True, mask="causal")
    assert v1.verification.passed and v1.spec.fused_ops and v1.spec.decomposed_layers == []


class _TwoInputs(nn.Module):
    """A user model pom-deploy has no config for: needs one given."""

    def __init__(self):
        super().__init__()
        self.mixer = PoMv2(8, 2, 1, 1, 2)
        self.bias = nn.Linear(3, 8)

    def forward(self, x, style):
        return self.mixer(x + self.bias(style).unsqueeze(1))


def test_user_export_config_file(tmp_path):
    config = {"inputs": [{"name": "x", "shape": ["batch", "tokens", 8]}, {"name": "style", "shape": ["batch", 3]}],
              "outputs": ["y"], "dims": {"batch": {"min": 1, "opt": 2, "max": 4}, "tokens": {"min": 1, "opt": 16, "max": 256}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = export_onnx(_TwoInputs().eval(), tmp_path / "user.onnx", config=tmp_path / "config.json")
    assert [t.name for t in result.spec.inputs] == ["x", "style"] and result.spec.inputs[0].max_shape == [4, 256, 8]


def test_torch_export_program(tmp_path):
    layer = spread_coefficients(PoMv2(16, 2, 2, 1, 4))
    dims = {0: torch.export.Dim("b"), 1: torch.export.Dim("n")}
    torch.export.save(torch.export.export(layer, (torch.randn(2, 5, 16),), dynamic_shapes=(dims,)), tmp_path / "m.pt2")
    result = export_onnx(tmp_path / "m.pt2", tmp_path / "m.onnx")
    assert result.spec.inputs[0].shape == ["batch", "tokens", 16]
    typical = [e.case for e in result.verification.errors if not e.case.endswith("edge inputs")]
    assert len(typical) == 2 and len(result.verification.errors) > 2  # and edge inputs at the ends of the dims


# --- command line and bad input ----------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(PoMv1(8, 2, 1), tmp_path_factory.mktemp("ckpt") / "model.pt")


def _cli_error(capsys, argv):
    code = export_cli.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("extra,message", [
    (["--dtype", "fp8"], "unknown precision 'fp8'"),  # --dtype: the former name of --precision
    (["--opset", "11"], "opset 11 is not supported"),
    (["--precision", "bf16", "--opset", "18"], "bf16 needs opset 22"),
    (["--mask", "diagonal"], "unknown mask kind"),
    (["--step", "--mask", "padding"], "no token dim to stream over"),
    (["--step"], "sees the whole sequence (no causal or block-causal mask): no step graph can equal the model"),
])
def test_bad_options_fail_with_one_line(tmp_path, capsys, checkpoint, extra, message):
    assert message in _cli_error(capsys, [str(checkpoint), "--onnx", "-o", str(tmp_path / "o.onnx"), *extra])
    assert os.listdir(tmp_path) == []


def test_missing_output_directory(tmp_path, capsys, checkpoint):
    assert "does not exist" in _cli_error(capsys, [str(checkpoint), "-o", str(tmp_path / "no" / "o.onnx")])


def test_unwritable_output_directory(tmp_path, monkeypatch, checkpoint):
    monkeypatch.setattr(os, "access", lambda path, mode: mode != os.W_OK)
    with pytest.raises(ExportError, match="not writable"):
        export_onnx(checkpoint, tmp_path / "o.onnx")


def test_existing_output_needs_force(tmp_path, capsys, checkpoint):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"keep me")
    assert "--force" in _cli_error(capsys, [str(checkpoint), "-o", str(out)])
    assert out.read_bytes() == b"keep me"
    assert export_cli.main([str(checkpoint), "-o", str(out), "--force", "--quiet"]) == 0
    assert onnx.load(str(out)).metadata_props[0].key == METADATA_KEY


def test_unsupported_model(tmp_path, capsys):
    with pytest.raises(ExportError, match="no PoM layer"):
        export_onnx(nn.Sequential(nn.Linear(4, 4)), tmp_path / "o.onnx")
    torch.save(nn.Linear(4, 4), tmp_path / "linear.pt")
    assert "no PoM layer" in _cli_error(capsys, [str(tmp_path / "linear.pt"), "--trust-pickle", "-o", str(tmp_path / "o.onnx")])
    assert not (tmp_path / "o.onnx").exists()


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.mixer = PoMv2(8, 2, 1, 1, 2)

    def forward(self, x):
        return self.mixer(x).view(-1, 7)


def test_forward_failing_on_dummy_input(tmp_path):
    with pytest.raises(ExportError, match="forward fails on the dummy input"):
        export_onnx(_Broken(), tmp_path / "o.onnx")
    assert os.listdir(tmp_path) == []


def test_failed_verification_writes_nothing(tmp_path, video_model):
    with pytest.raises(VerificationError, match="nothing written"):
        export_onnx(video_model, tmp_path / "o.onnx", atol=0.0, rtol=0.0, precision="fp16")
    assert os.listdir(tmp_path) == []


def test_json_output(tmp_path, capsys, checkpoint):
    assert export_cli.main([str(checkpoint), "--onnx", "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verification"]["passed"] and data["inputs"][0]["shape"] == ["batch", "tokens", 8]
    assert data["size_bytes"] == (tmp_path / "o.onnx").stat().st_size


def test_summary_and_inspect(tmp_path, capsys, exported_video):
    full, step = exported_video
    assert deploy_cli.main(["inspect", str(step.path)]) == 0
    out = capsys.readouterr().out
    for text in ("past.1.mean", "present.0.count", "video_pom", "chunk", "opset", "parameters", "step graph, fp32"):
        assert text in out
    assert deploy_cli.main(["inspect", str(full.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = sum(p.numel() for p in create_zoo_model("video_pom").parameters())
    # The exporter's optimizer stores identical constants once (e.g. fresh LayerNorm weights).
    assert info["symbolic_dims"] == ["batch", "tokens"] and 0.95 * params <= info["parameters"] <= params
    assert info["pom_deploy"]["architecture"]["name"] == "video_pom"


def test_help_and_version(capsys):
    for main in (export_cli.main, deploy_cli.main):
        for flag in ("--help", "--version"):
            with pytest.raises(SystemExit) as exit_info:
                main([flag])
            assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "pom-export" in out and "--step" in out and "build-engine" in out and "0.1.0" in out


def test_large_models_use_external_data(tmp_path, monkeypatch, video_model, exported_video):
    """Over the 2 GB protobuf limit weights go to <name>.data (threshold lowered for the test)."""
    from pom_deploy.exporters import onnx_file

    monkeypatch.setattr(onnx_file, "EXTERNAL_DATA_THRESHOLD", 1024)
    result = export_onnx(video_model, tmp_path / "big.onnx")
    assert result.external_data is not None and result.external_data.parent == tmp_path
    assert result.size_bytes + 32 * 1024 < exported_video[0].size_bytes  # the weights left the .onnx file
    x = torch.randn(1, 16, 16)
    with torch.no_grad():
        np.testing.assert_allclose(_run(_ort(result.path), tokens=x), video_model(x).numpy(), atol=MODEL_ATOL, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["big.onnx", result.external_data.name])


@pytest.mark.parametrize("mask", ["none", "causal", "padding", "full"])
def test_fp16_layer_mask_kinds_within_one_percent(tmp_path, mask):
    torch.manual_seed(0)
    layer = spread_coefficients(PoMv2(16, 3, 2, 1, 4))
    result = export_onnx(layer, tmp_path / "l16.onnx", mask=mask, precision="fp16")
    session = _ort(result.path)
    for batch, tokens in ((2, 11), (1, 300)):
        feeds = _layer_inputs(layer, mask, False, batch, tokens, tokens)
        with torch.no_grad():
            expected = _call_layer(layer, mask, feeds).numpy()
        half = {k: v.half() if v.is_floating_point() else v for k, v in feeds.items()}
        assert _relative_to_peak(_run(session, **half), expected) <= FP16_RELATIVE_TO_PEAK


def test_optimizer_gives_the_exporters_graphs(tmp_path, monkeypatch, exported_dit):
    """exporters.optimize skips one rewrite rule for speed (SlicesSplit) and reorders exact GELU's
    multiplications (same ops): the zoo's graphs must come out node for node as with the torch
    exporter's own optimizer."""
    from pom_deploy.exporters import graphs, onnx_export

    def nodes(path):
        return [(n.op_type, n.domain) for n in onnx.load(str(path)).graph.node]

    real_export = torch.onnx.export
    model, ours = exported_dit  # the zoo's largest graph: 2-D RoPE, modulation, patches
    with monkeypatch.context() as patch:  # the exporter's own optimizer instead of ours
        patch.setattr(graphs.torch.onnx, "export", lambda *a, **k: real_export(*a, **{**k, "optimize": True}))
        patch.setattr(onnx_export, "optimize", lambda model: None)
        theirs = export_onnx(model, tmp_path / "dit.torch.onnx", verify=False)
    assert nodes(ours.path) == nodes(theirs.path)


def test_exact_gelu_is_written_in_the_order_onnxruntime_fuses(tmp_path, exported_video, video_model):
    """The MLPs' GELU runs as one onnxruntime kernel (BiasGelu: the Linear's bias add too), not as
    Div, Erf, Add, Mul, Mul over the hidden features (exporters/optimize.py)."""
    model, (result, _) = video_model, exported_video
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "v.optimized.onnx")
    ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    optimized = [(n.domain, n.op_type) for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert optimized.count(("com.microsoft", "BiasGelu")) == len(model.blocks) and ("", "Erf") not in optimized
