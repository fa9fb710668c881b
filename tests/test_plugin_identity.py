"""The PolyAggregate plugin's identity and ABI codes are written once per language: Python
(pom_deploy.ops.poly_aggregate, the dtype registry, the ctypes binding) and C++ (the headers the
plugin and kernels include). Parsing the headers, these tests keep the two in agreement."""

from __future__ import annotations

import re
from pathlib import Path

from pom_deploy.dtypes import FLOAT_TYPES
from pom_deploy.ops import poly_aggregate as op
from pom_deploy.ops import poly_aggregate_abi as abi

HEADERS = Path(__file__).resolve().parents[1] / "plugins" / "poly_aggregate"


def _string_constants(header: str) -> dict[str, str]:
    text = (HEADERS / header).read_text()
    return dict(re.findall(r'constexpr\s+char\s+const\s*\*\s*(\w+)\s*=\s*"([^"]*)"\s*;', text))


def _enum_values(prefix: str) -> dict[str, int]:
    text = (HEADERS / "polyAggregate.h").read_text()
    return {name.lower(): int(value) for name, value in re.findall(rf"\b{prefix}_(\w+)\s*=\s*(-?\d+)", text)}


def test_plugin_identity_matches_the_header():
    constants = _string_constants("polyAggregateIdentity.h")
    assert (constants["kPluginName"], constants["kPluginVersion"], constants["kPluginNamespace"]) == (
        op.PLUGIN_NAME, op.PLUGIN_VERSION, op.PLUGIN_NAMESPACE)
    fields = tuple(value for name, value in constants.items() if name.startswith("kField"))
    assert fields == op.PLUGIN_FIELDS
    attributes = tuple(value for name, value in constants.items() if name.startswith("kAttribute"))
    assert fields + attributes == op.ONNX_ATTRIBUTES


def test_the_plugin_spells_its_identity_only_through_the_identity_header():
    plugin = (HEADERS / "polyAggregatePlugin.cpp").read_text() + (HEADERS / "polyAggregatePlugin.h").read_text()
    assert '#include "polyAggregateIdentity.h"' in plugin
    for value in (op.PLUGIN_NAME, op.PLUGIN_NAMESPACE, *op.ONNX_ATTRIBUTES):
        assert f'"{value}"' not in re.sub(r"(//|\*).*", "", plugin), value  # comments and messages aside


def test_abi_codes_match_the_c_enums():
    assert abi.VARIANTS == _enum_values("POM_VARIANT")
    assert abi.MODES == _enum_values("POM_MODE")
    assert abi.DTYPES == _enum_values("POM_DTYPE") == {t.name: t.abi for t in FLOAT_TYPES}
    assert abi.ROPES == _enum_values("POM_ROPE")
    assert tuple(abi.VARIANTS) == op.VARIANTS and tuple(abi.MODES) == op.MODES and tuple(abi.ROPES) == op.ROPES
    max_degree = re.search(r"#define\s+POM_MAX_DEGREE\s+(\d+)", (HEADERS / "polyAggregate.h").read_text())
    assert abi.MAX_DEGREE == int(max_degree.group(1))
    max_rope_degree = re.search(r"#define\s+POM_MAX_ROPE_DEGREE\s+(\d+)", (HEADERS / "polyAggregate.h").read_text())
    assert abi.MAX_ROPE_DEGREE == int(max_rope_degree.group(1))
