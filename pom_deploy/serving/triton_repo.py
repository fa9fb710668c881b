"""Write a Triton model repository (``REPO/NAME/config.pbtxt``, ``REPO/NAME/1/<model file>``) for an exported graph.

Everything is checked before anything is written: the options, the config against Triton's schema
(it is serialized, parsed back with ``ModelConfig``) and against the model file's own inputs and
outputs. The model folder is assembled in a temporary folder beside its destination and renamed into
place, so a failure leaves nothing behind and an existing model is replaced only with ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelLoadError
from ..spec import GraphSpec, TensorSpec
from ..ops.native_build import AUTOREGISTER_LIBRARY
from . import ServingError
from .repo_readme import repository_readme
from .triton_config import MODEL_FILES, RepoOptions, build_config, check_config, config_text, parse_config, summary
from .triton_model import generated_model_py


@dataclass
class RepoResult:
    model_dir: Path
    summary: dict


def read_model(path: Path) -> tuple[GraphSpec, dict[str, dict[str, TensorSpec]], dict | None]:
    """The spec, the file's own inputs/outputs, and (engines) the sidecar: what the config is checked against."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.suffix in (".engine", ".plan"):
        from ..tensorrt.sidecar import read_sidecar, spec_from_sidecar

        sidecar = read_sidecar(path)
        spec = spec_from_sidecar(sidecar)
        if spec is None:
            raise ServingError(f"{path} has no pom-deploy sidecar ({path.name}.json); build it with `pom-deploy build-engine`")
        # An engine is opened only by TensorRT on its own GPU: its I/O here is the sidecar's record.
        return spec, {"inputs": {t.name: t for t in spec.inputs}, "outputs": {t.name: t for t in spec.outputs}}, sidecar
    import onnx

    from ..onnx_graph import read_spec

    try:
        model = onnx.load(str(path), load_external_data=False)
        spec = read_spec(path)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not an ONNX file ({exc.__class__.__name__})") from None
    if spec is None:
        raise ServingError(f"{path} has no pom-deploy metadata; export it with pom-export")
    initializers = {i.name for i in model.graph.initializer}

    def tensors(values) -> dict[str, TensorSpec]:
        found = {}
        for value in values:
            if value.name in initializers:
                continue
            t = value.type.tensor_type
            shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in t.shape.dim]
            found[value.name] = TensorSpec(value.name, shape, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
                                           if t.elem_type != onnx.TensorProto.BFLOAT16 else "bfloat16")
        return found

    return spec, {"inputs": tensors(model.graph.input), "outputs": tensors(model.graph.output)}, None


def profile_max_batch(sidecar: dict | None) -> int | None:
    """The largest batch an engine's profiles accept (every input's first dim), None without profiles."""
    if not sidecar or not sidecar.get("profiles"):
        return None
    return max(min(r["max"][0] for r in profile.values()) for profile in sidecar["profiles"])


def write_repository(model_path: str | Path, repository: str | Path, options: RepoOptions, *, force: bool = False,
                     plugin: str | Path | None = None) -> RepoResult:
    model_path, repository = Path(model_path), Path(repository)
    spec, model_io, sidecar = read_model(model_path)
    if options.backend == "tensorrt" and sidecar is None:
        raise ServingError(f"--backend tensorrt serves TensorRT engines; build one first: pom-deploy build-engine {model_path}")
    if options.backend == "onnxruntime" and sidecar is not None:
        raise ServingError(f"{model_path} is a TensorRT engine; serve it with --backend tensorrt (or give the .onnx file)")
    model_file = MODEL_FILES.get(options.backend, "model" + model_path.suffix)
    config = build_config(spec, options, model_file, profile_max_batch(sidecar))
    text = config_text(config)
    check_config(parse_config(text), spec, model_io)

    destination = repository / options.name
    _check_destination(repository, destination, force)
    plugin_library = _plugin_library(sidecar, plugin) if options.backend == "tensorrt" else None
    staging_parent = repository if repository.is_dir() else repository.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{options.name}.", dir=staging_parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the repository from a container's user
    try:
        model_dir = staging if repository.is_dir() else staging / options.name
        version = model_dir / "1"
        version.mkdir(parents=True)
        (model_dir / "config.pbtxt").write_text(text)
        shutil.copy2(model_path, version / model_file)
        for extra in _external_data(model_path) if sidecar is None else []:
            shutil.copy2(model_path.parent / extra, version / extra)
        if options.backend == "python":
            (version / "model.py").write_text(generated_model_py(spec))
            if sidecar is not None:
                (version / (model_file + ".json")).write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
        if plugin_library is not None:
            (model_dir / "plugins").mkdir()
            shutil.copy2(plugin_library, model_dir / "plugins" / plugin_library.name)
            autoregister = plugin_library.with_name(AUTOREGISTER_LIBRARY)
            if autoregister.is_file():  # what Triton's dlopen of plugins= needs (docs/serving.md)
                shutil.copy2(autoregister, model_dir / "plugins" / autoregister.name)
        (model_dir / "README.md").write_text(repository_readme(spec, config, options, model_path, sidecar, plugin_library))
        _move_into_place(staging, model_dir, repository, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return RepoResult(destination, summary(config))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_destination(repository: Path, destination: Path, force: bool) -> None:
    if repository.exists() and not repository.is_dir():
        raise ServingError(f"{repository} exists and is not a folder")
    if not repository.exists() and not repository.parent.is_dir():
        raise ServingError(f"output directory {repository.parent} does not exist")
    parent = repository if repository.is_dir() else repository.parent
    if not os.access(parent, os.W_OK):
        raise ServingError(f"{parent} is not writable")
    if destination.exists() and not force:
        raise ServingError(f"{destination} exists; pass --force to replace it")


def _move_into_place(staging: Path, model_dir: Path, repository: Path, destination: Path) -> None:
    """Rename the finished model (or the new repository) into place; an old model is removed only after."""
    if not repository.is_dir():
        os.replace(staging, repository)
        return
    old = None
    if destination.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=repository))
        os.replace(destination, old / destination.name)
    os.rename(model_dir, destination)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _external_data(model_path: Path) -> list[str]:
    """Files holding an ONNX model's external tensors (they travel with it)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(model_path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})


def _plugin_library(sidecar: dict, plugin: str | Path | None) -> Path | None:
    """The pom plugin library an engine needs (``--plugin``, else the plugin search path's), copied with it."""
    needed = bool((sidecar.get("plugin") or {}).get("library"))
    if plugin is not None:
        path = Path(plugin)
        if not path.is_file():
            raise ServingError(f"plugin library {path} not found")
        return path
    if not needed:
        return None
    from ..tensorrt.plugins import find_plugin_library

    built_with = Path(sidecar["plugin"]["library"])
    found = find_plugin_library()  # not the sidecar's recorded path: a data file must not choose the code served
    if found is None:
        raise ServingError(f"the engine needs the pom plugin library ({built_with.name}) and it is not on the search path; "
                           "pass --plugin LIB or set POM_DEPLOY_PLUGIN")
    return found
