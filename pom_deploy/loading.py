"""Load models in every form users have them, telling the forms apart by content.

1. a pom-deploy checkpoint (``save_checkpoint``): format, architecture, state_dict;
2. a raw state_dict plus an architecture (argument or JSON/YAML file);
3. a pickled ``nn.Module``, only with ``trust_pickle=True`` (unpickling runs code);
4. a ``torch.export`` program (``.pt2`` archive), whose pickled members must pass the
   weights-only unpickler unless ``trust_pickle=True`` (``pt2_members``).
Upstream ``pom`` layers found in a module are swapped for the reference layers.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import architectures
from .digests import tensors_sha256
from .errors import (
    ArchitectureError,
    ModelLoadError,
    PomDeployWarning,
    StateDictMismatchError,
    UntrustedPickleError,
    first_line,
)
from .models import PoMLayer, PoMv1, PoMv2, PoMv2RoPE
from .outputs import atomic_output
from .pt2_members import check_pt2_members
from .version import __version__

CHECKPOINT_FORMAT = "pom-deploy-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(model: nn.Module, path: str | Path) -> Path:
    """Save a zoo model or reference layer with its architecture and a digest of its weights
    (checked by ``load_model``), atomically."""
    path = Path(path)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "pom_deploy_version": __version__,
        "architecture": architectures.describe(model),
        "state_dict": state_dict,
        "weights_sha256": tensors_sha256(state_dict),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_model(
    path: str | Path,
    architecture: dict[str, Any] | str | Path | None = None,
    trust_pickle: bool = False,
) -> nn.Module:
    """Load a model file in eval mode; ``architecture`` (a description or a JSON/YAML file) is
    needed for a raw state_dict only. Raises a ``ModelLoadError`` subclass for bad files."""
    path = Path(path)
    _check_readable(path)
    if zipfile.is_zipfile(path) and _is_exported_program(path):
        return _load_exported_program(path, trust_pickle)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: not the user's concern
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _refused_by_weights_only(exc, path):
            raise ModelLoadError(f"{path} is corrupted or not a PyTorch file ({first_line(exc)})") from None
        if not trust_pickle:
            raise UntrustedPickleError(
                f"{path} holds a pickled Python object; unpickling runs its code, so pass --trust-pickle "
                "(trust_pickle=True) only for a file you trust"
            ) from None
        obj = _load_pickle(path)
    except Exception as exc:  # torch raises RuntimeError/EOFError/... for truncated or foreign files
        raise ModelLoadError(f"{path} is truncated, corrupted or not a PyTorch file ({first_line(exc)})") from None
    return _to_model(obj, path, architecture).eval()  # (an exported program returned above is already inference-only)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path} is empty")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"{path} is not readable")


def _is_exported_program(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("archive_format") for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _load_exported_program(path: Path, trust_pickle: bool) -> nn.Module:
    """Load a ``.pt2`` archive; without ``trust_pickle``, only after every member torch would
    unpickle has passed the weights-only unpickler (``pt2_members``). Checked and loaded through
    one open file, so that the file checked is the file loaded even if the path is replaced."""
    try:
        with open(path, "rb") as file:
            if not trust_pickle:
                with zipfile.ZipFile(file) as archive:
                    check_pt2_members(archive, path)
                file.seek(0)
            program = torch.export.load(file)
        module = program.module()  # fails on constants that are not tensors, too
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path} is a damaged torch.export archive ({first_line(exc)})") from None
    module.exported_program = program
    return module


def _refused_by_weights_only(exc: pickle.UnpicklingError, path: Path) -> bool:
    """Whether torch's weights-only unpickler refused a pickled object (a class in torch.save's
    archive, or a plain pickle.dump, which starts with pickle's PROTO opcode), as opposed to a
    damaged or foreign file."""
    if "Unsupported global" in str(exc):
        return True
    with open(path, "rb") as file:
        return not zipfile.is_zipfile(path) and file.read(1) == pickle.PROTO


def _load_pickle(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not zipfile.is_zipfile(path):  # a plain pickle.dump (torch.load wants its own header)
                with open(path, "rb") as file:
                    return pickle.load(file)
            return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError) as exc:
        raise ModelLoadError(f"{path} needs Python code that is not importable here: {first_line(exc)}") from None
    except Exception as exc:
        raise ModelLoadError(f"{path} could not be unpickled ({first_line(exc)})") from None


def _to_model(obj: Any, path: Path, architecture) -> nn.Module:
    if isinstance(obj, nn.Module):
        return convert_upstream_layers(obj)
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        version = obj.get("format_version")
        if version != CHECKPOINT_VERSION:
            raise ModelLoadError(f"{path} is a pom-deploy checkpoint of format version {version}; this version reads {CHECKPOINT_VERSION}")
        _check_weights_digest(obj, path)
        model = architectures.build(obj["architecture"])
        load_state_dict_checked(model, obj["state_dict"], path)
        return model
    state_dict = _as_state_dict(obj)
    if state_dict is None:
        raise ModelLoadError(f"{path} is a PyTorch file but holds no model, checkpoint or state_dict ({type(obj).__name__})")
    if architecture is None:
        raise ModelLoadError(f"{path} is a raw state_dict: give its architecture (--arch/--arch-file, or architecture=...)")
    spec = architectures.read_file(architecture) if isinstance(architecture, (str, Path)) else architecture
    model = architectures.build(spec)
    load_state_dict_checked(model, state_dict, path)
    return model


def _check_weights_digest(checkpoint: Mapping[str, Any], path: Path) -> None:
    saved = checkpoint.get("weights_sha256")
    if saved is None:
        warnings.warn(f"{path} has no weights digest (saved by an older pom-deploy): a damaged file cannot be "
                      "detected; save it again with save_checkpoint to add one", PomDeployWarning, stacklevel=3)
        return
    if tensors_sha256(checkpoint["state_dict"]) != saved:
        raise ModelLoadError(f"{path} is corrupted: its weights do not match the sha256 digest saved with them")


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A mapping of names to tensors, also when wrapped as {"state_dict": ...} by a trainer."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
            return dict(obj)
        for key in ("state_dict", "model"):
            if key in obj:
                return _as_state_dict(obj[key])
    return None


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path | str = "state_dict") -> None:
    """``load_state_dict`` that names the first key that does not fit."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise StateDictMismatchError(f"{path}: missing key {key!r} for {type(model).__name__}")
        got = tuple(state_dict[key].shape)
        if got != tuple(value.shape):
            raise StateDictMismatchError(f"{path}: key {key!r} has shape {got}, the architecture expects {tuple(value.shape)}")
    unexpected = [k for k in state_dict if k not in expected]
    if unexpected:
        raise StateDictMismatchError(f"{path}: unexpected key {unexpected[0]!r} for {type(model).__name__}")
    model.load_state_dict(state_dict)


def convert_upstream_layers(model: nn.Module) -> nn.Module:
    """Swap upstream ``pom.PoM`` / ``pom.PoMRoPE`` layers (found by their attributes and
    parameter names, without importing upstream) for reference layers with the same weights."""
    replacement = _reference_layer_for(model)
    if replacement is not None:
        return replacement
    for name, child in list(model.named_children()):
        setattr(model, name, convert_upstream_layers(child))
    return model


def _reference_layer_for(module: nn.Module) -> PoMLayer | None:
    if isinstance(module, PoMLayer) or not all(hasattr(module, a) for a in ("dim", "order", "order_expand", "ag_proj")):
        return None
    bias = module.ag_proj.bias is not None
    if hasattr(module, "po_coeff") and hasattr(module, "n_sel_heads"):
        args = (module.dim, module.order, module.order_expand, module.n_groups, module.n_sel_heads, bias)
        if hasattr(module, "freqs_cos"):
            layer = PoMv2RoPE(*args, max_seq_len=module.freqs_cos.shape[0])
        elif hasattr(module, "row_cos"):
            layer = PoMv2RoPE(*args, max_h=module.row_cos.shape[0], max_w=module.col_cos.shape[0], rope_2d=True)
        else:
            layer = PoMv2(*args)
    elif all(hasattr(module, a) for a in ("po_proj", "se_proj")):
        layer = PoMv1(module.dim, module.order, module.order_expand, bias)
    else:
        return None
    try:
        load_state_dict_checked(layer, module.state_dict(), type(module).__name__)
    except (StateDictMismatchError, ArchitectureError) as exc:
        raise ModelLoadError(f"a layer looks like upstream PoM but does not convert: {exc}") from None
    return layer.train(module.training)
