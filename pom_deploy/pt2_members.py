"""The members of a ``torch.export`` archive (``.pt2``) that ``torch.export.load`` would unpickle,
checked with torch's weights-only unpickler before it is called.

``torch.export.load`` unpickles some members with Python's full unpickler, which runs whatever
code a file names: the sample inputs (after a weights-only attempt), weights and constants saved
as pickles, legacy ``.pt`` weight and constant files, opaque-object constants, and the members of
the older archive layout it falls back to. A downloaded archive must not run code unless the user
opts in (``--trust-pickle``), so every member is classed by how torch reads it: text and JSON
members and raw tensor payloads are data; every other member, known or not (a newer torch may
read it), must pass the weights-only unpickler. Bytes that pass it name no callable outside
torch's allowlist, so a full unpickler gives the same harmless result. The layout followed is
torch's ``torch/export/pt2_archive/_package.py``; a member it does not know is checked, not
skipped, so a change of layout can refuse a good archive but not let code through.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import warnings
import zipfile
from collections import Counter
from pathlib import Path

import torch

from .errors import ModelLoadError, UntrustedPickleError, first_line

# torch 2.13's layout (torch/export/pt2_archive/constants.py); written out, as older torch has no such module
MODELS_DIR = "models/"
WEIGHTS_DIR = "data/weights/"
CONSTANTS_DIR = "data/constants/"
EXTRA_DIR = "extra/"
SAMPLE_INPUTS_DIR = "data/sample_inputs/"
AOTINDUCTOR_DIR = "data/aotinductor/"
TENSOR_CONSTANT_PREFIX = "tensor_"  # other constant kinds (custom_obj_, opaque_obj_) are always unpickled
TEXT_MEMBERS = frozenset({"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"})


def check_pt2_members(archive: zipfile.ZipFile, path: Path) -> None:
    """Raise ``UntrustedPickleError`` naming the first member that ``torch.export.load`` would
    unpickle and the weights-only unpickler refuses."""
    for member in members_to_unpickle(archive, path):
        if member.split("/", 1)[-1].startswith(AOTINDUCTOR_DIR):  # torch loads these as libraries: no pickle check
            need = "holds AOTInductor compiled code, which torch.export.load loads"
        else:
            problem = _weights_only_problem(archive.read(member))
            if problem is None:
                continue
            need = f"needs full unpickling ({problem})"
        raise UntrustedPickleError(
            f"{path}: member {member} of this torch.export archive {need}, which runs code from the file; "
            "pass --trust-pickle (trust_pickle=True) only for an archive you trust"
        )


def members_to_unpickle(archive: zipfile.ZipFile, path: Path) -> list[str]:
    """Every member except those torch reads as text, JSON or raw tensor bytes, plus every member
    that a weights or constants config tells torch to unpickle (even one that is also read raw)."""
    names = [info.filename for info in archive.infolist() if not info.is_dir()]
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:  # which copy torch reads is not the checker's to guess
        raise ModelLoadError(f"{path} is a damaged torch.export archive (member {duplicated[0]} appears twice)")
    root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""  # torch's archive folder
    inside = {name[len(root):]: name for name in names if name.startswith(root)}
    data, pickled = set(TEXT_MEMBERS), set()
    for relative in inside:
        if relative.startswith((MODELS_DIR, EXTRA_DIR)):  # the program's JSON, extra files read as text
            data.add(relative)
        if relative.startswith(MODELS_DIR):
            model = relative[len(MODELS_DIR):-len(".json")]  # as torch names the model of any member there
            # unpickled by name (sample inputs; legacy weights and constants, read instead of the configs)
            pickled |= {f"{SAMPLE_INPUTS_DIR}{model}.pt", f"{WEIGHTS_DIR}{model}.pt", f"{CONSTANTS_DIR}{model}.pt"}
            for directory, kind in ((WEIGHTS_DIR, "weights"), (CONSTANTS_DIR, "constants")):
                config = f"{directory}{model}_{kind}_config.json"
                if config in inside:
                    data.add(config)
                    raw, unpickled = _payloads(archive.read(inside[config]), directory, kind, path, config)
                    data |= raw
                    pickled |= unpickled
    return [name for relative, name in inside.items() if relative not in data or relative in pickled] + \
        [name for name in names if not name.startswith(root)]  # torch's fallback reads the older layout from the top


def _payloads(text: bytes, directory: str, kind: str, path: Path, config: str) -> tuple[set[str], set[str]]:
    """The members a payload config makes torch read raw, and those it makes torch unpickle."""
    try:
        entries = json.loads(text)["config"]
        metas = [(str(meta["path_name"]), bool(meta.get("use_pickle"))) for meta in entries.values()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{path} is a damaged torch.export archive ({config}: {first_line(exc)})") from None
    raw, unpickled = set(), set()
    for name, use_pickle in metas:
        member = os.path.join(directory, name)  # as torch joins them
        always_unpickled = kind == "constants" and not name.startswith(TENSOR_CONSTANT_PREFIX)
        (unpickled if use_pickle or always_unpickled else raw).add(member)
    return raw, unpickled


def _weights_only_problem(content: bytes) -> str | None:
    """None when torch's weights-only unpickler reads ``content``, else why it does not."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not the user's concern
            warnings.simplefilter("ignore")
            torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as exc:  # any refusal means torch would fall back to full unpickling
        called = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if called:
            return f"it calls {called.group(1)}"
        return "not a weights-only PyTorch file" if isinstance(exc, pickle.UnpicklingError) else first_line(exc)
    return None
