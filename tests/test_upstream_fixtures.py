"""The reference layers compute exactly what upstream ``pom`` computes (golden data)."""

import numpy as np
import pytest
import torch

from conftest import load_upstream_case, upstream_cases
from tolerances import UPSTREAM
from pom_deploy.models.functional import BlockCausalMask

TOL = UPSTREAM


def _forward_cases():
    for name in upstream_cases():
        case, _, _ = load_upstream_case(name)
        for index, call in enumerate(case["calls"]):
            yield pytest.param(name, index, id=f"{name}-call{index}-{call['method']}")


@pytest.mark.parametrize("name,index", list(_forward_cases()))
def test_matches_upstream(name, index):
    case, data, layer = load_upstream_case(name)
    call = case["calls"][index]
    tensor = lambda key: torch.from_numpy(data[call["inputs"][key]])
    with torch.no_grad():
        if call["method"] == "forward":
            kwargs = {k: tensor(k) for k in ("positions", "positions_hw") if k in call["inputs"]}
            if "mask" in call["inputs"]:
                kwargs["mask"] = tensor("mask")
            elif call.get("mask") == "causal":
                kwargs["mask"] = "causal"
            xc = tensor("xc") if "xc" in call["inputs"] else None
            y = layer(tensor("xq"), xc, **kwargs)
            np.testing.assert_allclose(y.numpy(), data[call["outputs"][0]], **TOL)
            return
        frames = call["frames"]
        state = None
        equal = len(set(frames)) == 1
        outputs = []
        for f in range(len(frames)):
            x = torch.from_numpy(data[f"call{index}.x{f}"])
            y, state = layer.state_forward(x, x, state=state)
            outputs.append(y)
            if equal:  # upstream's call-counting mean agrees with ours for equal frames
                np.testing.assert_allclose(y.numpy(), data[f"call{index}.y{f}"], **TOL)
                np.testing.assert_allclose(state["mean"].numpy(), data[f"call{index}.h{f}"], **TOL)
            assert state["count"].tolist() == [[sum(frames[: f + 1])]] * x.shape[0]  # count (batch, 1)
        # Ours always equals the block-causal full forward, for any frame sizes.
        x_all = torch.cat([torch.from_numpy(data[f"call{index}.x{f}"]) for f in range(len(frames))], dim=1)
        ids = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(frames))
        mask = (ids[None, :] <= ids[:, None]).float().expand(x_all.shape[0], -1, -1)
        np.testing.assert_allclose(torch.cat(outputs, 1).numpy(), layer(x_all, mask=mask).detach().numpy(), **TOL)
        if not equal:  # ...where upstream, counting calls, does not
            last = len(frames) - 1
            assert not np.allclose(outputs[-1].numpy(), data[f"call{index}.y{last}"], **TOL)


def test_fixture_block_causal_mask_equals_block_causal_spec():
    """The fixtures' (B, T, T) block-causal masks and BlockCausalMask give the same output."""
    case, data, layer = load_upstream_case("v2_d3_e2_h4")
    index = next(i for i, c in enumerate(case["calls"]) if "block-causal" in c.get("mask", ""))
    xq = torch.from_numpy(data[f"call{index}.xq"])
    with torch.no_grad():
        y = layer(xq, mask=BlockCausalMask(4))
    np.testing.assert_allclose(y.numpy(), data[f"call{index}.y"], **TOL)


def test_every_fixture_case_is_exercised():
    cases = upstream_cases()
    assert len(cases) == 9
    calls = sum(len(load_upstream_case(name)[0]["calls"]) for name in cases)
    assert calls == len(list(_forward_cases())) == 32
