"""``torch.export`` programs (``.pt2``): their export config read off the program, and the
rewrites that let ``torch.onnx.export`` take programs holding upstream PoM layers.

A program is a traced graph of ATen ops, not modules: there is no PoM layer left to swap for a
reference layer (as pickled modules get) or to fuse, and no precision to change (the trace fixed
its dtypes). What it does hold is read here: each user input's symbolic dims and ranges, and the
op that consumes it (``aten.embedding`` -> token ids below the table's rows; a float input named
like a mask -> 0/1 verification data, as a mask must be).
"""

from __future__ import annotations

import sympy
import torch

from ..errors import ExportError
from .config import BATCH, TOKENS, DimSpec, ExportConfig, InputSpec

PROGRAM_MODULE = "(torch.export program)"  # what ``decomposed_layers`` names for a whole program
UNFUSED_REASON = ("a torch.export program holds ATen ops, not PoM layers, so no PolyAggregate node can replace them; "
                  "export the original model (a checkpoint or pickled module) with --fused-ops")


def exportable(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program with the ops the torch exporter cannot take rewritten, in place.

    Upstream's v2 activation, ``torch.clamp(leaky_relu(x), min=-0.1, max=6)``, records an int
    bound beside a float one; the exporter's decomposition then finds no ``aten.clamp``
    overload for the pair. Float bounds are the same values.
    """
    clamps = (torch.ops.aten.clamp.default, torch.ops.aten.clamp_min.default, torch.ops.aten.clamp_max.default)
    rewritten = [node for node in program.graph.nodes
                 if node.op == "call_function" and node.target in clamps and any(type(a) is int for a in node.args[1:])]
    for node in rewritten:
        node.args = (node.args[0], *(float(a) if type(a) is int else a for a in node.args[1:]))
    if rewritten:
        program.graph_module.recompile()
    _forget_derived_ranges(program)
    return program


def _forget_derived_ranges(program: torch.export.ExportedProgram) -> None:
    """A loaded program with a dim traced as a multiple (``4 * rows``: image sides) keeps that
    expression as a key of its shape environment's ranges, which the exporter's decomposition
    asserts to be symbols (torch 2.13); the base symbol's range says the same, so drop it."""
    from torch._export.utils import _get_shape_env_from_gm

    environment = _get_shape_env_from_gm(program.graph_module)
    if environment is not None:
        for key in [k for k in environment.var_to_range if not isinstance(k, sympy.Symbol)]:
            del environment.var_to_range[key]


def check_program_options(precision: str) -> None:
    if precision != "fp32":
        raise ExportError(f"--precision {precision} cannot apply to a torch.export program: its trace fixed float32 in its ops; "
                          "export the original model (a checkpoint or pickled module) instead")


def program_config(program: torch.export.ExportedProgram, ranges: dict[str, tuple[float, float]] | None = None) -> ExportConfig:
    """A config read off a ``torch.export`` program: its user inputs, example shapes and the
    ranges of its symbolic dims (axis 0 is called ``batch``, axis 1 ``tokens``), each input's
    kind from the op that consumes it, and ``ranges`` (``--input-range``) over all."""
    ranges = ranges or {}
    user_inputs = list(program.graph_signature.user_inputs)
    unknown = [n for n in ranges if n not in user_inputs]
    if unknown:
        raise ExportError(f"the program has no input {unknown[0]!r} (it takes {', '.join(user_inputs)})")
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name in set(user_inputs)]
    names: dict[str, str] = {}
    dims: dict[str, DimSpec] = {}
    inputs = []
    for node in placeholders:
        value = node.meta["val"]
        shape: list[int | str] = []
        for axis, size in enumerate(value.shape):
            if isinstance(size, int):
                shape.append(size)
                continue
            symbol = str(size.node.expr)
            if symbol not in names:
                name = _axis_name(value.dim(), axis) or f"{node.name}_{axis}"
                names[symbol] = name if name not in dims else f"{node.name}_{axis}"
                dims[names[symbol]] = _dim_spec(program, size, names[symbol])
            shape.append(names[symbol])
        inputs.append(_input_spec(program, node, tuple(shape), ranges.get(node.name)))
    outputs = [f"output_{i}" if i else "output" for i in range(len(program.graph_signature.user_outputs))]
    other_sizes = {name: spec.multiple_of * min(spec.max, spec.opt + 3) for name, spec in dims.items()}
    return ExportConfig(name="torch.export program", inputs=inputs, outputs=outputs, dims=dims,
                        verify_sizes=[other_sizes] if dims else [], dim_aliases=names, call=_program_call(program))


def _program_call(program: torch.export.ExportedProgram):
    """How the program's module is called: the inputs it was traced with as keywords go as
    keywords (a program traced from kwargs refuses them positionally)."""
    keywords = set(program.call_spec.in_spec.children()[1].context or ())
    if not keywords:
        return None

    def call(module, **inputs):
        return module(*[v for k, v in inputs.items() if k not in keywords], **{k: v for k, v in inputs.items() if k in keywords})

    return call


def _axis_name(rank: int, axis: int) -> str | None:
    """batch, tokens for sequences; batch, height, width for images (frames for video)."""
    if axis == 0:
        return "batch"
    spatial = {4: (None, None, "height", "width"), 5: (None, None, "frames", "height", "width")}
    return spatial[rank][axis] if rank in spatial else ("tokens" if axis == 1 else None)


def _dim_spec(program, size, name: str) -> DimSpec:
    """The range of a symbolic dim, in units of its multiple (a dim traced as ``4 * rows``)."""
    multiple, base = size.node.expr.as_coeff_Mul()
    bounds = next((r for k, r in program.range_constraints.items() if str(k) == str(base)), None)
    low = max(1, int(bounds.lower)) if bounds is not None else 1
    high = 16384 if bounds is None or "oo" in str(bounds.upper) else int(bounds.upper)
    hint = (size.node.hint or max(low, 2) * int(multiple)) // int(multiple)
    cap = BATCH.max if name == "batch" else TOKENS.max  # a sensible default profile
    return DimSpec(low, max(low, min(int(hint), high)), max(low, min(high, cap)), multiple_of=int(multiple))


def _input_spec(program, node, shape: tuple, value_range) -> InputSpec:
    value = node.meta["val"]
    if value.dtype.is_floating_point:
        kind = "mask" if "mask" in node.name.lower() else "float"
        if value_range is not None:
            return InputSpec(node.name, shape, kind="uniform", low=value_range[0], high=value_range[1])
        return InputSpec(node.name, shape, kind=kind)
    dtype = str(value.dtype).removeprefix("torch.")
    if value_range is None:
        value_range = (0, _embedding_rows(program, node))
    if value_range[1] is None:
        raise ExportError(f"the program's integer input {node.name!r} feeds no embedding table that bounds it: "
                          f"add --input-range {node.name}:LOW:HIGH")
    return InputSpec(node.name, shape, dtype, "index", low=value_range[0], high=value_range[1])


def _embedding_rows(program, node) -> int | None:
    """Rows of the embedding table ``node`` indexes (``aten.embedding(weight, ids)``), if any."""
    for user in node.users:
        if user.target is torch.ops.aten.embedding.default and user.args[1] is node:
            return int(user.args[0].meta["val"].shape[0])
    return None
