"""No file runs code without the opt-in (docs/security.md).

A corpus of malicious files, one for each place a pickle can sit in what pom-deploy reads: each
payload's ``__reduce__`` opens a marker file for writing (nothing else), so "the payload ran" is
"the marker exists". Every file is refused in one line, the marker is never created and nothing
is written; where the opt-in (``trust_pickle``) or an unsafe reader would load it, a control shows
that the payload is live, so a refusal is what stops it.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pom_deploy import export_onnx, load_model
from pom_deploy.architectures import read_file as read_architecture_file
from pom_deploy.cli import deploy as deploy_cli
from pom_deploy.cli import export as export_cli
from pom_deploy.errors import ArchitectureError, ExportError, ModelLoadError, RuntimeInputError, UntrustedPickleError
from pom_deploy.exporters.config import config_from_file
from pom_deploy.models import PoMv2
from pom_deploy.ops import native_libraries, ort_ops
from pom_deploy.tensorrt import plugins
from pom_deploy.tensorrt.sidecar import read_sidecar

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Unpickling this opens ``marker`` for writing: proof that unpickling ran the file's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def torch_saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


# --- torch.export archives ------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported_layer(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A real torch.export archive of a small reference PoM layer, and the layer."""
    torch.manual_seed(0)
    layer = PoMv2(8, 2, 1, n_sel_heads=2).eval()
    path = tmp_path_factory.mktemp("pt2") / "layer.pt2"
    torch.export.save(torch.export.export(layer, (torch.randn(1, 4, 8),)), path)
    return path, layer


@pytest.fixture(scope="module")
def archive(exported_layer) -> Path:
    """The archive every malicious one of the corpus is rewritten from."""
    return exported_layer[0]


def rewrite(source: Path, target: Path, change) -> None:
    """Copy an archive, passing {name relative to the archive's folder: bytes} through ``change``
    (a name that ``change`` starts with "/" goes to the top level, outside the folder)."""
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0] + "/"
        members = {name[len(root):]: archive.read(name) for name in names}
    change(members)
    with zipfile.ZipFile(target, "w") as out:
        for name, data in members.items():
            out.writestr(name[1:] if name.startswith("/") else root + name, data)


def _configured(kind: str, entry: dict, member: str, data: bytes):
    """Add a payload entry to the weights or constants config and its member."""
    config = f"data/{kind}/model_{kind}_config.json"

    def change(members):
        parsed = json.loads(members[config])
        parsed["config"]["injected"] = entry
        members[config] = json.dumps(parsed).encode()
        members[f"data/{kind}/{member}"] = data

    return change


def _pickled_weight(marker: Path):
    """The first weight turned into a pickled one (``use_pickle``), holding the payload."""
    def change(members):
        config = "data/weights/model_weights_config.json"
        parsed = json.loads(members[config])
        first = next(iter(parsed["config"].values()))
        first["use_pickle"] = True
        members[config] = json.dumps(parsed).encode()
        members[f"data/weights/{first['path_name']}"] = torch_saved(Payload(marker))

    return change


def _legacy_weights_named_raw(marker: Path):
    """A legacy weights file (torch unpickles it instead of reading the config) that the config
    also names as a raw payload: being read raw somewhere must not make it data."""
    def change(members):
        config = "data/weights/model_weights_config.json"
        parsed = json.loads(members[config])
        parsed["config"]["injected"] = {**next(iter(parsed["config"].values())), "path_name": "model.pt"}
        members[config] = json.dumps(parsed).encode()
        members["data/weights/model.pt"] = torch_saved(Payload(marker))

    return change


def _replace(member: str, data_of):
    def change(members):
        members[member] = data_of()

    return change


# (id, member named in the error, change(marker), whether torch.export.load in this torch runs it)
ARCHIVE_CORPUS = [
    ("sample-inputs-torch-save", "data/sample_inputs/model.pt",
     lambda m: _replace("data/sample_inputs/model.pt", lambda: torch_saved(Payload(m))), True),
    ("sample-inputs-plain-pickle", "data/sample_inputs/model.pt",
     lambda m: _replace("data/sample_inputs/model.pt", lambda: pickle.dumps(Payload(m))), True),
    ("pickled-weight", "data/weights/weight_", _pickled_weight, True),
    ("pickled-constant", "data/constants/tensor_9",
     lambda m: _configured("constants", {"path_name": "tensor_9", "is_param": False, "use_pickle": True, "tensor_meta": None},
                           "tensor_9", torch_saved(Payload(m))), True),
    ("opaque-object-constant", "data/constants/opaque_obj_0",
     lambda m: _configured("constants", {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None},
                           "opaque_obj_0", pickle.dumps(Payload(m))), True),
    ("legacy-weights-file", "data/weights/model.pt",
     lambda m: _replace("data/weights/model.pt", lambda: torch_saved(Payload(m))), True),
    ("legacy-weights-file-named-raw-by-the-config", "data/weights/model.pt", _legacy_weights_named_raw, True),
    ("legacy-constants-file", "data/constants/model.pt",
     lambda m: _replace("data/constants/model.pt", lambda: torch_saved(Payload(m))), True),
    # compiled code torch loads as a library (a stand-in: not run here); members this torch does not
    # read, which a newer one, or torch's fallback to the older layout, might
    ("aotinductor-library", "data/aotinductor/model/model.so",
     lambda m: _replace("data/aotinductor/model/model.so", lambda: b"\x7fELF stand-in"), False),
    ("unknown-member", "data/extra_state.pt", lambda m: _replace("data/extra_state.pt", lambda: torch_saved(Payload(m))), False),
    ("older-layout-member", "serialized_example_inputs.pt",
     lambda m: _replace("/serialized_example_inputs.pt", lambda: torch_saved(Payload(m))), False),
]
CORPUS_IDS = [case[0] for case in ARCHIVE_CORPUS]


@pytest.fixture
def malicious_archive(archive, tmp_path, request):
    _, member, change, live = request.param
    marker = tmp_path / "marker"
    evil = tmp_path / "models" / "evil.pt2"
    evil.parent.mkdir()
    rewrite(archive, evil, change(marker))
    out = tmp_path / "out"
    out.mkdir()
    return evil, member, marker, out, live


@pytest.mark.parametrize("malicious_archive", ARCHIVE_CORPUS, ids=CORPUS_IDS, indirect=True)
def test_archive_payload_never_runs_through_the_api(malicious_archive):
    evil, member, marker, out, _ = malicious_archive
    with pytest.raises(UntrustedPickleError) as refused:
        load_model(evil)
    message = str(refused.value)
    assert "\n" not in message and member in message and "--trust-pickle" in message and str(evil) in message
    with pytest.raises(UntrustedPickleError):
        export_onnx(evil, out / "evil.onnx")
    assert not marker.exists() and not any(out.iterdir())


@pytest.mark.parametrize("malicious_archive", ARCHIVE_CORPUS, ids=CORPUS_IDS, indirect=True)
def test_archive_payload_never_runs_through_the_cli(malicious_archive, capsys):
    evil, member, marker, out, _ = malicious_archive
    code = export_cli.main([str(evil), "--onnx", "-o", str(out / "evil.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ") and member in err[0] and "--trust-pickle" in err[0]
    assert not marker.exists() and not any(out.iterdir())


@pytest.mark.parametrize("malicious_archive", [c for c in ARCHIVE_CORPUS if c[3]], ids=[c[0] for c in ARCHIVE_CORPUS if c[3]],
                         indirect=True)
def test_with_trust_pickle_the_archive_loads_as_torch_loads_it_and_the_payload_is_live(malicious_archive):
    """The control: torch.export.load runs each of these payloads, so the refusal above is what stops them."""
    evil, _, marker, _, _ = malicious_archive
    try:
        load_model(evil, trust_pickle=True)
    except ModelLoadError:
        pass  # the payload's result is no tensor, so most archives are damaged afterwards
    assert marker.exists()


def test_a_clean_archive_loads_without_the_opt_in(exported_layer):
    path, layer = exported_layer
    x = torch.randn(1, 4, 8)
    torch.testing.assert_close(load_model(path)(x), layer(x), rtol=0, atol=0)  # the same program, the same ops


def test_the_real_cli_refuses_a_malicious_archive_in_one_line(archive, tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt2"
    rewrite(archive, evil, _replace("data/sample_inputs/model.pt", lambda: torch_saved(Payload(marker))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "pom_deploy.cli.export", str(evil), "--onnx", "-o", str(tmp_path / "o.onnx")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-pickle" in lines[0]
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt2"]


def test_an_archive_with_a_duplicated_member_is_refused(archive, tmp_path):
    """Two members of one name: the checker and torch could read different ones."""
    evil = tmp_path / "evil.pt2"
    rewrite(archive, evil, lambda members: None)
    with zipfile.ZipFile(evil, "a") as out, pytest.warns(UserWarning, match="Duplicate name"):
        out.writestr(zipfile.ZipInfo(out.namelist()[0].split("/")[0] + "/data/sample_inputs/model.pt"),
                     torch_saved(Payload(tmp_path / "marker")))
    with pytest.raises(ModelLoadError, match="appears twice"):
        load_model(evil)
    assert not (tmp_path / "marker").exists()


# --- checkpoints and pickles ------------------------------------------------------------------

@pytest.mark.parametrize("form", ["torch-save", "plain-pickle", "inside-a-checkpoint"])
def test_pickled_files_are_refused_without_the_opt_in(tmp_path, capsys, form):
    marker, path, out = tmp_path / "marker", tmp_path / "model.pt", tmp_path / "out.onnx"
    if form == "plain-pickle":
        path.write_bytes(pickle.dumps(Payload(marker)))
    else:
        obj = Payload(marker) if form == "torch-save" else {"format": "pom-deploy-checkpoint", "architecture": Payload(marker)}
        path.write_bytes(torch_saved(obj))
    with pytest.raises(UntrustedPickleError):
        load_model(path)
    assert export_cli.main([str(path), "--onnx", "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--trust-pickle" in err[0]
    assert not marker.exists() and not out.exists()
    with pytest.raises(ModelLoadError):  # the control: the opt-in unpickles it, and the payload runs
        load_model(path, trust_pickle=True)
    assert marker.exists()


# --- arrays: stream states and `pom-deploy run` inputs ------------------------------------------

def _object_array(marker: Path) -> np.ndarray:
    array = np.empty(1, dtype=object)
    array[0] = Payload(marker)
    return array


def test_a_state_file_with_an_object_array_is_refused(exported_video, tmp_path):
    from pom_deploy.runtime import load

    _, step = exported_video
    marker, path = tmp_path / "marker", tmp_path / "state.npz"
    stream = load(step.path, device="cpu")
    stream.step(np.zeros((1, 8, 16), dtype=np.float32))
    np.savez(path, **stream.state, evil=_object_array(marker))
    with pytest.raises(RuntimeInputError, match="not a readable state file") as refused:
        stream.load_state(path)
    assert "\n" not in str(refused.value) and not marker.exists()
    with np.load(path, allow_pickle=True) as data:  # the control: an unpickling reader runs it
        data["evil"]
    assert marker.exists()


def test_run_input_with_an_object_array_is_refused(exported_video, tmp_path, capsys):
    _, step = exported_video
    marker, path, out = tmp_path / "marker", tmp_path / "frames.npy", tmp_path / "out.npy"
    np.save(path, _object_array(marker), allow_pickle=True)
    assert deploy_cli.main(["run", str(step.path), "--input", str(path), "-o", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert not marker.exists() and not out.exists()
    np.load(path, allow_pickle=True)  # the control
    assert marker.exists()


# --- text files: architectures, export configs, engine sidecars --------------------------------

def _yaml_payload(marker: Path) -> str:
    return f"!!python/object/apply:builtins.open [{str(marker)!r}, w]\n"


def test_yaml_files_are_parsed_safely(tmp_path):
    marker = tmp_path / "marker"
    arch, config = tmp_path / "arch.yaml", tmp_path / "config.yaml"
    arch.write_text(_yaml_payload(marker))
    config.write_text("dims: " + _yaml_payload(marker))
    with pytest.raises(ArchitectureError, match="not valid YAML") as refused:
        read_architecture_file(arch)
    assert "\n" not in str(refused.value)
    with pytest.raises(ExportError, match="not valid YAML") as refused_config:
        config_from_file(config)
    assert "\n" not in str(refused_config.value)
    assert not marker.exists()
    yaml.unsafe_load(arch.read_text()).close()  # the control: an unsafe loader runs it
    assert marker.exists()


def test_an_engine_sidecar_is_json_and_nothing_else(tmp_path):
    marker, engine = tmp_path / "marker", tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    (tmp_path / "model.engine.json").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ModelLoadError, match="unreadable engine sidecar") as refused:
        read_sidecar(engine)
    assert "\n" not in str(refused.value) and not marker.exists()


# --- plugin and op libraries: code by nature, only from an explicit path or the search path -----

LIBRARY_NAMES = (ort_ops.LIBRARY_NAME, "libpom_deploy_plugins.so")


@pytest.fixture
def planted_libraries(tmp_path, monkeypatch):
    """Libraries of the searched names in the current directory and in a model's folder."""
    cwd, model_dir = tmp_path / "cwd", tmp_path / "model"
    planted = []
    for folder in (cwd, model_dir):
        folder.mkdir()
        for name in LIBRARY_NAMES:
            (folder / name).write_bytes(b"\x7fELF planted")
            planted.append((folder / name).resolve())
    monkeypatch.chdir(cwd)
    monkeypatch.delenv(ort_ops.ORT_OPS_ENV, raising=False)
    monkeypatch.delenv(plugins.PLUGIN_ENV, raising=False)
    return model_dir, planted


def test_libraries_are_not_picked_up_from_the_current_directory_or_a_models_folder(planted_libraries):
    _, planted = planted_libraries
    for found in (ort_ops.find_ort_ops_library(), plugins.find_plugin_library()):
        assert found is None or found.resolve() not in planted
    searched = [p.resolve() for p in native_libraries.search_folders()]
    assert Path.cwd().resolve() not in searched and planted[-1].parent not in searched


def test_an_engine_sidecar_does_not_choose_the_plugin_library(planted_libraries, tmp_path, monkeypatch):
    """The sidecar records the library the engine was built with; a data file must not choose the
    code loaded, so a recorded path is never loaded (only --plugin or the search path)."""
    from pom_deploy.tensorrt import backend as backend_module
    from pom_deploy.serving import ServingError
    from pom_deploy.serving.triton_repo import _plugin_library

    model_dir, _ = planted_libraries
    recorded = {"plugin": {"library": str(model_dir / "libpom_deploy_plugins.so")}}
    monkeypatch.setattr(native_libraries, "search_folders", lambda: [tmp_path / "nowhere"])
    loaded = []
    monkeypatch.setattr(backend_module, "load_plugin_library", lambda path, trt: loaded.append(path))
    engine = backend_module.TensorRTBackend.__new__(backend_module.TensorRTBackend)  # no TensorRT here: the plugin step alone
    engine.path, engine.sidecar = model_dir / "model.engine", recorded
    with pytest.raises(plugins.PluginError, match="POM_DEPLOY_PLUGIN"):
        engine._load_plugin(None, trt=None)
    with pytest.raises(ServingError, match="not on the search path"):
        _plugin_library(recorded, None)
    assert loaded == []
