"""The PolyAggregate plugin's identity and ABI codes are written once per language: Python
(pom_deploy.ops.poly_aggregate, the dtype registry, the ctypes binding) and C++ (the headers the
plugin and kernels include). Parsing the headers, these tests keep the two in agreement."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

from pom_deploy.dtypes import FLOAT_TYPES
from pom_deploy.ops import poly_aggregate as op
from pom_deploy.ops import poly_aggregate_abi as abi

HEADERS = Path(__file__).resolve().parents[1] / "plugins" / "poly_aggregate"


def _string_constants(header: str) -> dict[str, str]:
    text = cpp_without_comments((HEADERS / header).read_text())
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


# A C++ token that matters to comment stripping: a comment, a string or character literal (raw
# strings too), or any other character.
_CPP_TOKEN = re.compile(r"""
    (?P<line_comment>//[^\n]*)
  | (?P<block_comment>/\*.*?\*/)
  | (?P<raw_string>R"(?P<delimiter>[^()\\\s]{0,16})\(.*?\)(?P=delimiter)")
  | (?P<string>"(?:\\.|[^"\\\n])*")
  | (?P<char>'(?:\\.|[^'\\\n])*')
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


def cpp_without_comments(source: str) -> str:
    """``source`` with its comments blanked (a block comment keeps its line breaks) and
    everything else, string literals included, as written: a ``//`` or ``/*`` inside a string
    is no comment, and a ``*`` in code (``char const* k = "...";``) starts nothing."""
    parts = []
    for token in _CPP_TOKEN.finditer(source):
        if token.lastgroup == "line_comment":
            parts.append(" ")
        elif token.lastgroup == "block_comment":
            parts.append(" " + "\n" * token.group().count("\n"))
        else:
            parts.append(token.group())
    return "".join(parts)


def _identity_literals_outside_the_header(source: str) -> list[str]:
    code = cpp_without_comments(source)
    return [value for value in (op.PLUGIN_NAME, op.PLUGIN_NAMESPACE, *op.ONNX_ATTRIBUTES) if f'"{value}"' in code]


def test_the_plugin_spells_its_identity_only_through_the_identity_header():
    sources = ("polyAggregatePlugin.cpp", "polyAggregatePlugin.h", "polyAggregateAutoRegister.cpp")
    plugin = "".join((HEADERS / name).read_text() for name in sources)
    assert '#include "polyAggregateIdentity.h"' in plugin
    assert _identity_literals_outside_the_header(plugin) == []


def test_comment_stripper_catches_a_namespace_written_in_the_plugin():
    """What the check above would miss if it stripped too much: a namespace string on a line with
    a ``*`` (the earlier regex dropped everything after any ``*``), after a string holding ``//``."""
    plugin = (HEADERS / "polyAggregatePlugin.cpp").read_text()
    changed = plugin + '\nchar const* kNs = "pom_deploy"; // the namespace, spelled again\n'
    assert _identity_literals_outside_the_header(changed) == ["pom_deploy"]
    assert re.sub(r"(//|\*).*", "", changed).count('"pom_deploy"') == 0  # the earlier stripper's blind spot
    url = 'auto const* u = "http://x/*y"; char const* n = "PolyAggregate"; /* "mode" */ char c = \'"\'; // "rope"\n'
    assert _identity_literals_outside_the_header(url) == ["PolyAggregate"]
    raw = 'auto r = R"x(a "// b)x"; char const* v = "variant";\n'
    assert _identity_literals_outside_the_header(raw) == ["variant"]
    assert cpp_without_comments("a /* one\ntwo */ b // three\nc") == "a  \n b  \nc"


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


def test_desc_fields_match_the_c_struct():
    """The ctypes ``Desc`` lays out PomPolyAggregateDesc's fields in the header's order and widths
    (names differ in case only), appended fields such as sideInputsFloat32 included."""
    text = cpp_without_comments((HEADERS / "polyAggregate.h").read_text())
    body = re.search(r"typedef\s+struct\s*\{(.*?)\}\s*PomPolyAggregateDesc\s*;", text, re.DOTALL).group(1)
    fields = re.findall(r"\b(int32_t|int64_t)\s+(\w+)\s*;", body)
    widths = {"int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64}
    snake = [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for _, name in fields]
    assert [(name, widths[kind]) for (kind, _), name in zip(fields, snake)] == list(abi.Desc._fields_)
