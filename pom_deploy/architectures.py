"""Named architectures: how to build a model from a small, serialisable description.

A description is ``{"name": NAME, "config": {...}}``; the upstream golden-data form
``{"generation": "v1"|"v2", "class": "PoM"|"PoMRoPE", "ctor": {...}}`` is accepted too,
so an upstream layer's constructor arguments can be given as they were written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.nn as nn

from .errors import ArchitectureError, first_line
from .models import PoMv1, PoMv2, PoMv2RoPE
from .models.zoo import ZOO

ARCHITECTURES: dict[str, type[nn.Module]] = {"PoMv1": PoMv1, "PoMv2": PoMv2, "PoMv2RoPE": PoMv2RoPE, **ZOO}
_UPSTREAM_NAMES = {("v1", "PoM"): "PoMv1", ("v2", "PoM"): "PoMv2", ("v2", "PoMRoPE"): "PoMv2RoPE"}


def normalize(spec: dict[str, Any]) -> dict[str, Any]:
    """Turn any accepted description into ``{"name": ..., "config": {...}}``."""
    if not isinstance(spec, dict):
        raise ArchitectureError(f"an architecture must be a mapping, got {type(spec).__name__}")
    if "generation" in spec and "class" in spec:
        key = (spec["generation"], spec["class"])
        if key not in _UPSTREAM_NAMES:
            raise ArchitectureError(f"unknown upstream layer {key[1]!r} of generation {key[0]!r}")
        name, config = _UPSTREAM_NAMES[key], spec.get("ctor", {})
    elif "name" in spec:
        name, config = spec["name"], spec.get("config", {})
    else:
        raise ArchitectureError('an architecture needs "name" (and "config"), or upstream "generation", "class" and "ctor"')
    if name not in ARCHITECTURES:
        raise ArchitectureError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    if not isinstance(config, dict):
        raise ArchitectureError(f"architecture config must be a mapping, got {type(config).__name__}")
    return {"name": name, "config": dict(config)}


def build(spec: dict[str, Any]) -> nn.Module:
    """Instantiate a described architecture (random weights)."""
    spec = normalize(spec)
    try:
        return ARCHITECTURES[spec["name"]](**spec["config"])
    except TypeError as exc:
        raise ArchitectureError(f"bad config for {spec['name']}: {exc}") from None


def describe(model: nn.Module) -> dict[str, Any]:
    """The description of a model built from a known architecture."""
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return {"name": name, "config": model.config()}
    raise ArchitectureError(
        f"{type(model).__name__} is not a pom-deploy architecture; save its state_dict, or the module with trust_pickle"
    )


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML architecture file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ArchitectureError(f"cannot read architecture file {path}: {exc.strerror}") from None
    is_yaml = path.suffix.lower() in (".yaml", ".yml")
    try:
        if is_yaml:
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # both parsers raise their own error types
        raise ArchitectureError(f"architecture file {path} is not valid {'YAML' if is_yaml else 'JSON'}: {first_line(exc)}") from None
    return normalize(data)
