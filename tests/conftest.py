"""Shared fixtures: upstream golden cases, and exports made once per test session."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pom_deploy.models import PoMv1, PoMv2, PoMv2RoPE

UPSTREAM_DIR = Path(__file__).parent / "fixtures" / "upstream"


def upstream_cases() -> list[str]:
    return sorted(p.stem for p in UPSTREAM_DIR.glob("*.json"))


def load_upstream_case(name: str):
    """(case description, arrays, reference layer loaded with the case's upstream weights)."""
    case = json.loads((UPSTREAM_DIR / f"{name}.json").read_text())
    data = np.load(UPSTREAM_DIR / f"{name}.npz")
    if case["generation"] == "v1":
        layer = PoMv1(**case["ctor"])
    elif case["class"] == "PoM":
        layer = PoMv2(**case["ctor"])
    else:
        layer = PoMv2RoPE(**case["ctor"])
    state_dict = {k[len("param."):]: torch.from_numpy(data[k]) for k in data.files if k.startswith("param.")}
    layer.load_state_dict(state_dict)
    return case, data, layer.eval()


@pytest.fixture(autouse=True)
def _seeded_random():
    """Every test starts from the same torch and numpy seeds, so its random inputs do not
    change from run to run or with the order of the tests."""
    torch.manual_seed(0)
    np.random.seed(0)


def spread_coefficients(layer: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Upstream inits po_coeff within 1e-3 (outputs near zero); tests want visible outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, PoMv2):
                m.po_coeff.copy_(torch.rand(m.po_coeff.shape, generator=generator) - 0.5)
    return layer.eval()


@pytest.fixture(scope="session")
def video_model():
    from pom_deploy.models.zoo import create_zoo_model

    return create_zoo_model("video_pom", seed=0)


@pytest.fixture(scope="session")
def exported_video(tmp_path_factory, video_model):
    """The video zoo model exported once as a full and a step graph."""
    from pom_deploy.exporters import export_onnx

    folder = tmp_path_factory.mktemp("video")
    full = export_onnx(video_model, folder / "video.onnx")
    step = export_onnx(video_model, folder / "video.step.onnx", step=True)
    return full, step
