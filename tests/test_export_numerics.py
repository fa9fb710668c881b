"""fp16 graphs on what users feed (outlier tokens, padded junk), fused layers left decomposed with
a reason, and the export's verification: each against the model's own float32 forward."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from tolerances import FP16_RELATIVE_TO_PEAK
from pom_deploy.comparator import compare_outputs
from pom_deploy.errors import VerificationError
from pom_deploy.exporters import ExportConfig, InputSpec, export_onnx
from pom_deploy.exporters.config import BATCH, TOKENS
from pom_deploy.exporters.model_configs import layer_config
from pom_deploy.exporters.verify_inputs import draw_input, verification_cases
from pom_deploy.models import PoMv1, PoMv2
from pom_deploy.tolerances import tolerances


def _run(path, feeds, options=None):
    session = ort.InferenceSession(str(path), options or ort.SessionOptions(), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})[0].astype(np.float64)


def _relative_to_peak(actual, expected) -> float:
    return float(np.abs(actual - expected.numpy()).max() / expected.abs().max())


def overflow_cases():
    """(name, fp32 inputs) of a PoMv1(32, 4, 1) with a padding mask, where float16 powers of the
    features overflow (65,504) and the float32 model is finite: padded-out tokens holding junk of
    scale 300, and one token x40 among 4,096 (issue 21)."""
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(2, 64, 32, generator=generator)
    mask = torch.ones(2, 64)
    mask[:, 40:] = 0
    x[:, 40:] *= 300
    outlier = torch.randn(1, 4096, 32, generator=generator)
    outlier[0, 7] *= 40
    return [("padded junk", {"xq": x, "mask": mask}), ("outlier token", {"xq": outlier, "mask": torch.ones(1, 4096)})]


@pytest.fixture(scope="module")
def overflow_layer():
    torch.manual_seed(0)
    return PoMv1(32, 4, 1).eval()


@pytest.mark.parametrize("fused", [False, True], ids=["decomposed", "fused-function-bodies"])
def test_fp16_features_do_not_overflow_on_outliers_and_padded_junk(tmp_path, overflow_layer, fused):
    """Features and their powers are computed in float32 in the fp16 graph (as the kernels do):
    finite and within the fp16 bound of the float32 model's own forward."""
    result = export_onnx(overflow_layer, tmp_path / "l.onnx", precision="fp16", mask="padding", fused_ops=fused, verify=False)
    assert result.spec.fused_ops == fused
    for name, feeds in overflow_cases():
        with torch.no_grad():
            expected = overflow_layer(feeds["xq"], mask=feeds["mask"])
        assert torch.isfinite(expected).all()
        actual = _run(result.path, {k: v.half() for k, v in feeds.items()})
        assert np.isfinite(actual).all(), f"{name}: {np.count_nonzero(~np.isfinite(actual))} non-finite outputs"
        assert _relative_to_peak(actual, expected) <= FP16_RELATIVE_TO_PEAK, name


class _OtherMaskDtypes(nn.Module):
    """Layers called with masks the fused op cannot take: bool, and float32 in an fp16 model."""

    def __init__(self):
        super().__init__()
        self.boolean = PoMv2(16, 2, 2, 1, 4)
        self.float32 = PoMv2(16, 2, 2, 1, 4)

    def forward(self, x, mask):
        y = self.boolean(x, mask=mask > 0.5)
        return self.float32(y, mask=mask.float())


def _masked_config() -> ExportConfig:
    return ExportConfig("masked", [InputSpec("x", ("batch", "tokens", 16)), InputSpec("mask", ("batch", "tokens"), kind="mask")],
                        ["y"], {"batch": BATCH, "tokens": TOKENS}, verify_sizes=[{"batch": 3, "tokens": 37}])


def test_fused_export_leaves_layers_with_other_mask_dtypes_decomposed(tmp_path):
    torch.manual_seed(0)
    model = _OtherMaskDtypes().eval()
    with torch.no_grad():
        for layer in (model.boolean, model.float32):
            layer.po_coeff.uniform_(-0.5, 0.5)
    result = export_onnx(model, tmp_path / "m.onnx", config=_masked_config(), precision="fp16", fused_ops=True)
    assert result.verification.passed and not result.spec.fused_ops
    reasons = {d["module"]: d["reason"] for d in result.spec.decomposed_layers}
    assert reasons.keys() == {"boolean", "float32"}
    assert reasons["boolean"].startswith("a bool mask tensor with float16 features")
    assert reasons["float32"].startswith("a float32 mask tensor with float16 features")
    x, mask = torch.randn(2, 21, 16), torch.ones(2, 21)
    mask[0, 15:] = 0
    with torch.no_grad():
        expected = model(x, mask)
    assert _relative_to_peak(_run(result.path, {"x": x.half(), "mask": mask.half()}), expected) <= FP16_RELATIVE_TO_PEAK


# --- verification: each output against its scale, on edge inputs drawn by kind ---------------

def test_comparator_judges_each_output_against_its_scale_and_fails_nan():
    """At fp16's default tolerance an output of scale 1e-3 that is 5% off fails (an absolute
    1e-2 passed it), 0.1% passes; a NaN where the reference is finite fails; where the reference
    is not finite nothing is judged."""
    atol, rtol = tolerances("fp16")
    reference = np.linspace(-1e-3, 1e-3, 101).reshape(1, 101)
    (off,) = compare_outputs({"y": reference}, {"y": reference * 1.05 + 1e-5}, atol, rtol)
    assert not off.passed and off.scale == pytest.approx(1e-3) and off.error_to_scale > 0.05
    assert compare_outputs({"y": reference}, {"y": reference * 1.001}, atol, rtol)[0].passed
    broken = reference.copy()
    broken[0, 3] = np.nan
    (nan,) = compare_outputs({"y": reference}, {"y": broken}, atol, rtol)
    assert not nan.passed and nan.nonfinite == 1 and np.isfinite(nan.max_absdiff)
    (unjudged,) = compare_outputs({"y": broken}, {"y": broken}, atol, rtol)
    assert unjudged.passed and unjudged.reference_nonfinite == 1 and unjudged.nonfinite == 0


def test_edge_inputs_by_kind():
    generator = torch.Generator().manual_seed(0)
    mask = draw_input("mask", [3, 8], generator=generator, edge=True)
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and mask[-1].sum() == 0 and mask[:, 6:].sum() == 0 and mask[:-1, 0].all()
    for kind, high in (("index", 10), ("positions", 64)):
        ids = draw_input(kind, [5, 2], generator=generator, high=high, edge=True)
        assert ids.dtype == torch.int64 and ids.min() == 0 and ids.max() == high - 1
    timesteps = draw_input("timestep", [4], generator=generator, high=1000, edge=True)
    assert timesteps.min() == 0 and timesteps.max() == 1000
    tokens = draw_input("float", [2, 50, 16], generator=generator, edge=True)
    assert tokens[:, 0].abs().mean() > 10 * tokens[:, 1:].abs().mean()
    image = draw_input("float", [1, 4, 6, 6], generator=generator, edge=True)
    assert image[:, :, 0, 0].abs().mean() > 10 * image[:, :, 1:].abs().mean()
    config, _ = layer_config(PoMv1(16, 2, 1), mask="padding")
    cases = verification_cases(config)
    edges = [c.sizes for c in cases if c.edge]
    assert {"batch": 1, "tokens": 1} in edges and {"batch": 64, "tokens": 1} in edges and {"batch": 1, "tokens": 16384} in edges
    inputs = next(c for c in cases if c.edge).inputs(config, generator)
    padded = inputs["mask"] == 0
    assert inputs["xq"][padded].abs().mean() > 100 and inputs["xq"][~padded][:, 1:].abs().mean() < 2


class _OverflowsInFloat16(nn.Module):
    """A user model whose output overflows float16 on an outlier token (a projection with
    weights of scale 250: |y| up to a few 1,000 on unit-normal tokens, above 65,504 on a token
    x40), while its float32 forward stays finite."""

    def __init__(self):
        super().__init__()
        self.mixer = PoMv2(16, 2, 2, 1, 4)
        self.wide = nn.Linear(16, 16, bias=False)
        with torch.no_grad():
            self.wide.weight.normal_(0, 250)

    def forward(self, x):
        return self.mixer(x) + self.wide(x)


def test_fp16_export_that_gives_nan_where_the_model_is_finite_fails_verification(tmp_path):
    model = _OverflowsInFloat16().eval()
    with torch.no_grad():
        x = draw_input("float", [2, 64, 16], generator=torch.Generator().manual_seed(1), edge=True)
        assert torch.isfinite(model(x)).all()
    with pytest.raises(
        VerificationError,
        match=r"^onnxruntime gives [\d,]+ NaN/Inf values in 'output' \(batch=\d+ tokens=\d+ edge inputs\) where PyTorch is finite",
    ):
        export_onnx(model, tmp_path / "m.onnx", precision="fp16")
    assert list(tmp_path.iterdir()) == []
