"""`pom-export MODEL --onnx` with no config on the models users bring (tests/user_models.py):
a causal token LM, an image classifier, a model with two inputs, pickled (--trust-pickle) and
as torch.export programs holding upstream-style layers; each graph run in onnxruntime at shapes
other than the export's and compared with the user's own eager model. Then the LM streamed
token by token, a model the reader cannot decide on, and the runtime's checks."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import pom_deploy
from pom_deploy import export_onnx
from pom_deploy.cli import deploy as deploy_cli
from pom_deploy.cli import export as export_cli
from pom_deploy.errors import ExportError, RuntimeInputError
from pom_deploy.exporters.input_reading import input_choices, parse_input, read_inputs
from pom_deploy.models import PoMv2

from conftest import spread_coefficients
from tolerances import USER_MODEL_RELATIVE_TO_PEAK
from user_models import CondNet, ContextNet, ImageClassifier, ScaledNet, TokenLM

KINDS = ("lm", "image", "cond")


def _feeds(kind: str, batch: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Inputs at shapes the export did not use: ``size`` tokens, or a (4 size) x (2 size) image."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "lm":
        return {"ids": torch.randint(0, 50, (batch, size), generator=generator)}
    if kind == "image":
        return {"image": torch.randn(batch, 3, 4 * size, 8 * size, generator=generator)}
    return {"x": torch.randn(batch, size, 12, generator=generator), "cond": torch.randn(batch, 8, generator=generator)}


def _program(model: torch.nn.Module, kind: str) -> torch.export.ExportedProgram:
    """torch.export with dynamic batch and tokens (image sides: multiples of the patch), as users save."""
    batch = torch.export.Dim("batch", max=64)
    if kind == "lm":
        shapes = {"ids": {0: batch, 1: torch.export.Dim("tokens", max=4096)}}
    elif kind == "image":
        shapes = {"image": {0: batch, 2: 4 * torch.export.Dim("rows", max=64), 3: 4 * torch.export.Dim("cols", max=64)}}
    else:
        shapes = {"x": {0: batch, 1: torch.export.Dim("tokens", max=4096)}, "cond": {0: batch}}
    return torch.export.export(model, (), _feeds(kind, 2, 5, 0), dynamic_shapes=shapes)


@pytest.fixture(scope="module")
def user_exports(tmp_path_factory):
    """{(kind, form): (the user's eager model, exported path)}: every kind exported with the CLI
    and nothing but --onnx (and --trust-pickle for the pickled files)."""
    root = tmp_path_factory.mktemp("user_models")
    torch.manual_seed(0)
    models = {"lm": TokenLM(), "image": ImageClassifier(), "cond": CondNet()}
    exports = {}
    for kind, model in models.items():
        model.eval()
        torch.save(model, root / f"{kind}.pt")
        torch.export.save(_program(model, kind), root / f"{kind}.pt2")
        for form, extra in (("pickle", ["--trust-pickle"]), ("pt2", [])):
            source = root / f"{kind}.{'pt' if form == 'pickle' else 'pt2'}"
            output = root / f"{kind}.{form}.onnx"
            assert export_cli.main([str(source), "--onnx", "-o", str(output), "-q", *extra]) == 0
            exports[kind, form] = model, output
    return exports


def _assert_close_to_peak(actual: np.ndarray, expected: np.ndarray) -> None:
    peak = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= USER_MODEL_RELATIVE_TO_PEAK * peak


@pytest.mark.parametrize("form", ["pickle", "pt2"])
@pytest.mark.parametrize("kind", KINDS)
def test_user_model_matches_its_eager_forward_at_other_shapes(user_exports, kind, form):
    model, path = user_exports[kind, form]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch, size, seed in ((3, 7, 1), (1, 3, 2)):
        feeds = _feeds(kind, batch, size, seed)
        with torch.no_grad():
            expected = model(**feeds).numpy()
        (actual,) = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        _assert_close_to_peak(actual, expected)


def test_inputs_read_from_the_models_are_in_the_metadata(user_exports):
    lm = pom_deploy.load(user_exports["lm", "pickle"][1]).spec.inputs
    assert (lm[0].name, lm[0].shape, lm[0].dtype, lm[0].value_range) == ("ids", ["batch", "tokens"], "int64", [0, 50])
    image = pom_deploy.load(user_exports["image", "pickle"][1]).spec
    assert image.inputs[0].shape == ["batch", 3, "height", "width"] and image.dim_multiples == {"height": 4, "width": 4}
    cond = pom_deploy.load(user_exports["cond", "pickle"][1]).spec.inputs
    assert [(t.name, t.shape) for t in cond] == [("x", ["batch", "tokens", 12]), ("cond", ["batch", 8])]
    program = pom_deploy.load(user_exports["lm", "pt2"][1]).spec.inputs
    assert program[0].dtype == "int64" and program[0].value_range == [0, 50]  # read off aten.embedding


def test_runtime_refuses_what_the_graph_cannot_take_as_the_model_does(user_exports):
    lm = pom_deploy.load(user_exports["lm", "pickle"][1])
    with pytest.raises(RuntimeInputError, match=r"'ids' holds 50, outside its range \[0, 50\)"):
        lm.run(ids=np.full((1, 4), 50, np.int64))
    with pytest.raises(RuntimeInputError, match=r"'ids' holds -1"):
        lm.run(ids=np.full((1, 4), -1, np.int64))
    image = pom_deploy.load(user_exports["image", "pickle"][1])
    with pytest.raises(RuntimeInputError, match=r"'image' axis 2 \(height\) is 18, not a multiple of 4"):
        image.run(image=np.zeros((1, 3, 18, 16), np.float32))


@pytest.fixture(scope="module")
def lm_step(tmp_path_factory):
    """The LM's step graph, exported from the pickled file with --step and nothing else."""
    root = tmp_path_factory.mktemp("lm_step")
    torch.manual_seed(1)
    model = TokenLM().eval()
    torch.save(model, root / "lm.pt")
    assert export_cli.main([str(root / "lm.pt"), "--onnx", "--step", "--trust-pickle", "-o", str(root / "lm.step.onnx"), "-q"]) == 0
    return model, root / "lm.step.onnx"


def _stream(path, ids: np.ndarray, chunks: list[int]) -> np.ndarray:
    stream = pom_deploy.load(path)
    outputs, start = [], 0
    for size in chunks:
        outputs.append(stream.step(ids[:, start:start + size]))
        start += size
    return np.concatenate(outputs, axis=1)


def test_lm_streams_token_by_token_equal_to_its_causal_forward(lm_step):
    model, path = lm_step
    ids = np.random.default_rng(0).integers(0, 50, (2, 11))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
    _assert_close_to_peak(_stream(path, ids, [1] * 11), expected)
    spec = pom_deploy.load(path).spec
    assert spec.data_inputs[0].shape == ["batch", "chunk"] and spec.data_inputs[0].value_range == [0, 50]


def test_lm_streams_token_chunks_of_any_size_equal_to_its_causal_forward(lm_step):
    model, path = lm_step
    ids = np.random.default_rng(1).integers(0, 50, (2, 11))
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)).numpy()
    _assert_close_to_peak(_stream(path, ids, [3, 1, 5, 2]), expected)


def test_run_command_streams_an_int64_token_file(tmp_path, lm_step):
    model, path = lm_step
    ids = np.random.default_rng(2).integers(0, 50, (9,))
    np.save(tmp_path / "ids.npy", ids.astype(np.int32))  # (tokens,): one stream; int32 ids are widened
    assert deploy_cli.main(["run", str(path), "--input", str(tmp_path / "ids.npy"), "--chunk", "1",
                            "-o", str(tmp_path / "logits.npy"), "-q"]) == 0
    with torch.no_grad():
        expected = model(torch.from_numpy(ids)[None]).numpy()
    _assert_close_to_peak(np.load(tmp_path / "logits.npy"), expected)


def test_undecided_input_fails_in_one_line_naming_the_flag(tmp_path, capsys):
    torch.save(ScaledNet().eval(), tmp_path / "scaled.pt")
    code = export_cli.main([str(tmp_path / "scaled.pt"), "--trust-pickle", "-o", str(tmp_path / "s.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: cannot read input 'gain'") and "--input gain:DTYPE:DIMS" in err[0]
    assert export_cli.main([str(tmp_path / "scaled.pt"), "--trust-pickle", "-o", str(tmp_path / "s.onnx"), "-q",
                            "--input", "gain:float32:batch,1,1"]) == 0
    inputs = pom_deploy.load(tmp_path / "s.onnx").spec.inputs
    assert [(t.name, t.shape) for t in inputs] == [("x", ["batch", "tokens", 8]), ("gain", ["batch", 1, 1])]


def test_wrongly_read_input_fails_in_one_line_naming_the_flag(tmp_path):
    with pytest.raises(ExportError, match=r"read from the model: x \(batch, tokens, 8\), context \(batch, 8\); "
                                          r"declare any that is not so with --input NAME:DTYPE:DIMS$"):
        torch.save(ContextNet().eval(), tmp_path / "c.pt")
        export_onnx(tmp_path / "c.pt", tmp_path / "c.onnx", trust_pickle=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]


def test_reader_takes_declarations_ranges_and_examples():
    lm = TokenLM()
    config = read_inputs(lm, ranges={"ids": (0, 7)})
    assert config.inputs[0].integer_range == [0, 7] and config.stream_dim == "tokens"
    config = read_inputs(CondNet(), declared={"cond": parse_input("cond:float32:batch,8")})
    assert [s.dims for s in config.inputs] == [("batch", "tokens", 12), ("batch", 8)]
    choices = input_choices(ScaledNet(), example_inputs=(torch.randn(2, 5, 8), torch.randn(2, 1, 1)), input_ranges={"gain": (1, 2)})
    config = read_inputs(ScaledNet(), choices.declared, choices.ranges, choices.examples)
    assert [s.dims for s in config.inputs] == [("batch", "tokens", 8), ("batch", 1, 1)]  # the reader's dims; the example's rank
    assert (config.inputs[1].kind, config.inputs[1].low, config.inputs[1].high) == ("uniform", 1, 2)
    with pytest.raises(ExportError, match="range is unknown: add --input-range gain:LOW:HIGH"):
        read_inputs(ScaledNet(), declared={"gain": parse_input("gain:int64:batch")})
    with pytest.raises(ExportError, match="has no input 'ids'"):
        read_inputs(ScaledNet(), declared={"ids": parse_input("ids:int64:batch,tokens")})
    for bad in ("ids", "ids:int65:batch", "ids:int64:"):
        with pytest.raises(ExportError, match="--input"):
            parse_input(bad)


def test_masked_program_verifies_and_says_why_it_is_not_fused_or_fp16(tmp_path):
    """A .pt2 layer with a float padding mask: 0/1 verification data (N(0, 1) data made row sums
    negative and PyTorch itself blow up); fused ops recorded as not applied, with the reason;
    fp16 refused in one line."""
    layer = spread_coefficients(PoMv2(16, 2, 2, 1, 4))

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x, mask):
            return self.layer(x, mask=mask)

    batch, tokens = torch.export.Dim("batch", max=64), torch.export.Dim("tokens", max=4096)
    program = torch.export.export(Masked().eval(), (torch.randn(2, 5, 16), torch.ones(2, 5)),
                                  dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}))
    torch.export.save(program, tmp_path / "masked.pt2")
    result = export_onnx(tmp_path / "masked.pt2", tmp_path / "masked.onnx", fused_ops=True)
    assert result.verification.passed and not result.spec.fused_ops
    assert [d["module"] for d in result.spec.decomposed_layers] == ["(torch.export program)"]
    assert "original model" in result.spec.decomposed_layers[0]["reason"]
    with pytest.raises(ExportError, match="--precision fp16 cannot apply to a torch.export program"):
        export_onnx(tmp_path / "masked.pt2", tmp_path / "masked16.onnx", precision="fp16")
