"""fp16 graphs on what users feed (outlier tokens, padded junk), fused layers left decomposed with
a reason, and the export's verification: each against the model's own float32 forward."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn

from tolerances import FP16_RELATIVE_TO_PEAK
from pom_deploy.exporters import ExportConfig, InputSpec, export_onnx
from pom_deploy.exporters.config import BATCH, TOKENS
from pom_deploy.models import PoMv1, PoMv2


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
    result = export_onnx(overflow_layer, tmp_path / "l.onnx", dtype="fp16", mask="padding", fused_ops_enabled=fused, verify=False)
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
    result = export_onnx(model, tmp_path / "m.onnx", config=_masked_config(), dtype="fp16", fused_ops_enabled=True)
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
