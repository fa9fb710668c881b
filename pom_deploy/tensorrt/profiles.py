"""TensorRT optimization profiles derived from the pom-deploy metadata.

A profile gives every graph input a ``(min, opt, max)`` shape triple. The defaults come from
the ONNX metadata (``TensorSpec.min_shape/opt_shape/max_shape``, written by the exporter);
``--profile`` overrides them per input. Overriding one input also moves the symbolic dims it
shares with other inputs (``batch``, ``tokens``, ``chunk``...), so ``--profile
x:1x1x32,1x256x32,4x4096x32`` resizes a mask ``(batch, tokens)`` with it.

Everything here is pure Python: it runs (and is tested) without TensorRT.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import PomDeployError
from ..spec import TensorSpec, shape_text

# Ranges for well-known symbolic dims, used only where the metadata gives none.
DEFAULT_DIM_RANGES: dict[str, tuple[int, int, int]] = {
    "batch": (1, 1, 8),
    "tokens": (1, 256, 4096),
    "chunk": (1, 16, 256),
}

Shape = tuple[int, ...]


class ProfileError(PomDeployError):
    """A ``--profile`` value is malformed or does not fit the graph's inputs."""


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape

    def contains(self, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        return len(shape) == len(self.min) and all(lo <= d <= hi for lo, d, hi in zip(self.min, shape, self.max))

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict) -> "ShapeRange":
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))

    def __str__(self) -> str:
        return ",".join("x".join(str(d) for d in s) for s in (self.min, self.opt, self.max))


# One optimization profile: input name -> shape range (insertion order = graph input order).
Profile = dict[str, ShapeRange]


def _parse_shape(text: str, where: str) -> Shape:
    text = text.strip()
    if not re.fullmatch(r"\d+(x\d+)*", text):
        raise ProfileError(f"{where}: bad shape {text!r}; write dims joined by 'x', e.g. 1x256x32")
    return tuple(int(d) for d in text.split("x"))


def parse_profile_arg(text: str) -> dict[str, ShapeRange]:
    """Parse one ``--profile`` value: ``name:MIN,OPT,MAX[;name:MIN,OPT,MAX...]``.

    Each shape is dims joined by ``x`` (``1x256x32``); a single shape means min = opt = max.
    """
    out: dict[str, ShapeRange] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, shapes = part.rpartition(":")
        if not sep or not name:
            raise ProfileError(f"--profile {text!r}: expected NAME:MIN,OPT,MAX (e.g. x:1x1x32,1x256x32,4x4096x32)")
        if name in out:
            raise ProfileError(f"--profile {text!r}: input {name!r} given twice in one profile")
        triple = [_parse_shape(s, f"--profile {name}") for s in shapes.split(",")]
        if len(triple) == 1:
            triple *= 3
        if len(triple) != 3:
            raise ProfileError(f"--profile {name}: give MIN,OPT,MAX (3 shapes) or one fixed shape, got {len(triple)}")
        out[name] = _checked(name, ShapeRange(*triple))
    if not out:
        raise ProfileError("--profile: empty value")
    return out


def _checked(name: str, rng: ShapeRange) -> ShapeRange:
    if not len(rng.min) == len(rng.opt) == len(rng.max):
        raise ProfileError(f"profile for {name!r}: min/opt/max have different ranks ({rng})")
    for axis, (lo, opt, hi) in enumerate(zip(rng.min, rng.opt, rng.max)):
        if not 0 < lo <= opt <= hi:
            raise ProfileError(f"profile for {name!r} axis {axis}: need 0 < min <= opt <= max, got {lo}, {opt}, {hi}")
    return rng


def _default_range(spec: TensorSpec) -> ShapeRange | None:
    """The metadata's own range for an input, if it has one."""
    if spec.min_shape and spec.opt_shape and spec.max_shape:
        return ShapeRange(tuple(spec.min_shape), tuple(spec.opt_shape), tuple(spec.max_shape))
    return None


def derive_profiles(inputs: list[TensorSpec], overrides: list[dict[str, ShapeRange]] | None = None) -> list[Profile]:
    """Optimization profiles for a graph's inputs.

    Without overrides: one profile, the metadata's min/opt/max (symbolic dims without a
    metadata range fall back to ``DEFAULT_DIM_RANGES``). Each override dict makes one
    profile: the inputs it names take the given ranges, the others are derived from the
    metadata with the symbolic dims bound by the named inputs.
    """
    by_name = {t.name: t for t in inputs}
    profiles = []
    for index, override in enumerate(overrides or [{}]):
        unknown = sorted(set(override) - set(by_name))
        if unknown:
            raise ProfileError(f"profile {index}: no input named {', '.join(map(repr, unknown))}; inputs are: {', '.join(by_name)}")
        bound: dict[str, tuple[int, int, int]] = {}
        for name, rng in override.items():
            _bind(by_name[name], _checked(name, rng), bound, index)
        profile: Profile = {}
        for spec in inputs:
            profile[spec.name] = override.get(spec.name) or _fill(spec, bound, index)
        profiles.append(profile)
    return profiles


def _bind(spec: TensorSpec, rng: ShapeRange, bound: dict, index: int) -> None:
    if len(rng.min) != len(spec.shape):
        raise ProfileError(f"profile {index}: input {spec.name!r} has {len(spec.shape)} dims {shape_text(spec.shape)}, "
                           f"the profile gives {len(rng.min)} ({rng})")
    for axis, dim in enumerate(spec.shape):
        triple = (rng.min[axis], rng.opt[axis], rng.max[axis])
        if isinstance(dim, int):
            if triple != (dim, dim, dim):
                raise ProfileError(f"profile {index}: input {spec.name!r} axis {axis} is fixed to {dim}, the profile gives {triple}")
        elif dim in bound and bound[dim] != triple:
            raise ProfileError(f"profile {index}: dim {dim!r} is {bound[dim]} in one input and {triple} in {spec.name!r}")
        else:
            bound[dim] = triple


def _fill(spec: TensorSpec, bound: dict, index: int) -> ShapeRange:
    default = _default_range(spec)
    triples = []
    for axis, dim in enumerate(spec.shape):
        if isinstance(dim, int):
            triples.append((dim, dim, dim))
        elif dim in bound:
            triples.append(bound[dim])
        elif default is not None:
            triples.append((default.min[axis], default.opt[axis], default.max[axis]))
        elif dim in DEFAULT_DIM_RANGES:
            triples.append(DEFAULT_DIM_RANGES[dim])
        else:
            raise ProfileError(
                f"profile {index}: input {spec.name!r} axis {axis} ({dim!r}) has no range in the metadata; "
                f"give one with --profile {spec.name}:MIN,OPT,MAX"
            )
        if isinstance(dim, str):
            bound.setdefault(dim, triples[-1])
    mins, opts, maxs = zip(*triples) if triples else ((), (), ())
    return _checked(spec.name, ShapeRange(tuple(mins), tuple(opts), tuple(maxs)))


def select_profile(profiles: list[Profile], shapes: dict[str, tuple[int, ...]]) -> int:
    """Index of the first profile whose ranges contain every given input shape, or -1."""
    for index, profile in enumerate(profiles):
        if all(name in profile and profile[name].contains(shape) for name, shape in shapes.items()):
            return index
    return -1


def opt_shapes(profile: Profile) -> dict[str, tuple[int, ...]]:
    """Each input's opt shape: the shape a profile is tuned for, and the one comparisons run."""
    return {name: tuple(rng.opt) for name, rng in profile.items()}


def profiles_to_json(profiles: list[Profile]) -> list[dict]:
    return [{name: rng.to_json() for name, rng in p.items()} for p in profiles]


def profiles_from_json(data: list[dict]) -> list[Profile]:
    return [{name: ShapeRange.from_json(r) for name, r in p.items()} for p in data]
