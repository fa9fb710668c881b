"""`pom-deploy triton-repo`: configs for every backend, parsed with Triton's own schema and checked
against the exported files; bad input refused with one line and nothing written. No server here
(test_triton_server.py serves the python backend with a real tritonserver)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

pytest.importorskip("tritonclient.grpc", reason="the serve extra (tritonclient) is not installed")

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from pom_deploy.cli.deploy import main
from pom_deploy.tensorrt.profiles import derive_profiles, profiles_to_json
from pom_deploy.tensorrt.sidecar import make_sidecar, sidecar_path, write_json_atomic
from pom_deploy.serving import ServingError
from pom_deploy.serving.triton_config import RepoOptions, build_config, check_config, config_text, parse_config
from pom_deploy.serving.sequences import SequenceError, SequenceStore, Stream, step_number
from pom_deploy.serving.server import servable_models
from pom_deploy.serving.triton_model import plan_groups, self_check
from pom_deploy.serving.triton_repo import read_model

TYPES = {onnx.TensorProto.FLOAT: pb.TYPE_FP32, onnx.TensorProto.INT64: pb.TYPE_INT64}


def graph_io(path):
    """Inputs and outputs as the ONNX file declares them: {name: (Triton type, dims with -1 for symbolic)}."""
    graph = onnx.load(str(path), load_external_data=False).graph
    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
    return ({v.name: (TYPES[v.type.tensor_type.elem_type], dims(v)) for v in graph.input},
            {v.name: (TYPES[v.type.tensor_type.elem_type], dims(v)) for v in graph.output})


def read_config(model_dir):
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


@pytest.fixture(scope="module")
def files(exported_video):
    full, step = exported_video
    return full.path, step.path


def fake_engine(tmp_path, onnx_path, plugin_library=None):
    """An engine file with the sidecar `build-engine` writes (the engine bytes are never opened here)."""
    spec, _, _ = read_model(onnx_path)
    engine = tmp_path / "video.step.engine"
    engine.write_bytes(b"not a real engine: read by TensorRT only")
    environment = {"tensorrt_version": "10.13.3.9", "gpu_name": "NVIDIA Jetson Thor", "compute_capability": "11.0"}
    write_json_atomic(
        sidecar_path(engine),
        make_sidecar(
            environment=environment,
            precision="fp16",
            strongly_typed=False,
            profiles=profiles_to_json(derive_profiles(spec.inputs)),
            spec=spec,
            source_onnx={"path": str(onnx_path), "sha256": "0" * 64},
            plugin={
                "fused_nodes": 2,
                "library": str(plugin_library) if plugin_library else None,
                "loaded_by": "load_library",
                "function_stripped": False,
            },
            options={"version_compatible": False, "hardware_compatibility": None},
        ),
    )
    return engine


def test_step_graph_onnxruntime_repo_has_an_implicit_state_per_past_present_pair(tmp_path, files):
    _, step = files
    assert main(["triton-repo", str(step), "-o", str(tmp_path / "repo"), "--backend", "onnxruntime", "--name", "video"]) == 0
    model_dir = tmp_path / "repo" / "video"
    config = read_config(model_dir)
    inputs, outputs = graph_io(model_dir / "1" / "model.onnx")
    assert (model_dir / "1" / "model.onnx").read_bytes() == step.read_bytes()
    assert config.backend == "onnxruntime" and config.max_batch_size == 8
    assert config.sequence_batching.WhichOneof("strategy_choice") == "oldest"
    past = sorted(n for n in inputs if n.startswith("past."))
    assert len(past) == 4 and sorted(s.input_name for s in config.sequence_batching.state) == past
    for state in config.sequence_batching.state:
        assert state.output_name == state.input_name.replace("past.", "present.")
        assert (state.data_type, [-1, *state.dims]) == inputs[state.input_name] == outputs[state.output_name]
        (initial,) = state.initial_state
        assert initial.zero_data and list(initial.dims) == list(state.dims) and initial.data_type == state.data_type
    # the count state is (batch, 1): one dim left once Triton owns the batch dim (format 1 had none)
    assert [list(s.dims) for s in config.sequence_batching.state if s.input_name.endswith("count")] == [[1], [1]]
    (chunk,) = config.input
    assert (chunk.name, chunk.data_type, [-1, *chunk.dims]) == ("tokens", *inputs["tokens"])
    assert [o.name for o in config.output] == ["output"]
    assert not config.sequence_batching.control_input


def test_full_graph_repos_use_dynamic_batching_within_the_export_profile(tmp_path, files):
    full, _ = files
    spec, _, _ = read_model(full)
    (tokens,) = spec.inputs
    for backend in ("onnxruntime", "python"):
        assert main(["triton-repo", str(full), "-o", str(tmp_path / "repo"), "--backend", backend, "--name", backend,
                     "--max-batch", "16"]) == 0
        config = read_config(tmp_path / "repo" / backend)
        assert config.max_batch_size == 16 <= tokens.max_shape[0]
        assert list(config.dynamic_batching.preferred_batch_size) == [tokens.opt_shape[0]]
        assert not config.HasField("sequence_batching")
        inputs, outputs = graph_io(full)
        assert {i.name: (i.data_type, [-1, *i.dims]) for i in config.input} == inputs
        assert {o.name: (o.data_type, [-1, *o.dims]) for o in config.output} == outputs
    assert (tmp_path / "repo" / "python" / "1" / "model.py").is_file()


def test_python_step_repo_keeps_state_in_the_model_and_gets_control_inputs(tmp_path, files):
    _, step = files
    assert main(["triton-repo", str(step), "-o", str(tmp_path / "repo"), "--max-sequences", "32", "--threads", "2"]) == 0
    model_dir = tmp_path / "repo" / "pom"
    config = read_config(model_dir)
    assert config.backend == "python" and not config.sequence_batching.state
    assert [i.name for i in config.input] == ["tokens"] and [o.name for o in config.output] == ["output"]
    kinds = {c.name: c.control[0] for c in config.sequence_batching.control_input}
    assert kinds["START"].kind == pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_START
    assert kinds["END"].kind == pb.ModelSequenceBatching.Control.CONTROL_SEQUENCE_END
    assert "CORRID" not in kinds  # the model reads the whole id from the request: a UINT64 control truncates string ids
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["model_file"] == "model.onnx" and params["threads"] == "2" and params["max_sequences"] == "32"
    assert params["max_chunk"] == str(read_model(step)[0].data_inputs[0].max_shape[1])  # the export profile's largest chunk
    assert config.sequence_batching.oldest.max_candidate_sequences == 32
    assert "from pom_deploy.serving.triton_model import TritonPythonModel" in (model_dir / "1" / "model.py").read_text()


def test_tensorrt_repo_ships_the_engine_as_model_plan_with_plugin_and_versions(tmp_path, files, monkeypatch):
    _, step = files
    plugin = tmp_path / "libpom_deploy_plugins.so"
    plugin.write_bytes(b"\x7fELF stand-in")
    monkeypatch.setenv("POM_DEPLOY_PLUGIN", str(plugin))  # found on the search path, not through the sidecar's record
    (tmp_path / "libpom_deploy_plugins_autoregister.so").write_bytes(b"\x7fELF autoregister stand-in")
    engine = fake_engine(tmp_path, step, plugin)
    assert main(["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--backend", "tensorrt", "--name", "trt"]) == 0
    model_dir = tmp_path / "repo" / "trt"
    config = read_config(model_dir)
    assert config.platform == "tensorrt_plan" and (model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert len(config.sequence_batching.state) == 4 and config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert (model_dir / "plugins" / plugin.name).read_bytes() == plugin.read_bytes()
    # Triton's backend loads plugins= with a plain dlopen: the library that registers at load.
    assert (model_dir / "plugins" / "libpom_deploy_plugins_autoregister.so").read_bytes() == b"\x7fELF autoregister stand-in"
    readme = (model_dir / "README.md").read_text()
    assert "TensorRT 10.13.3.9" in readme and "NVIDIA Jetson Thor" in readme
    assert "plugins=/models/trt/plugins/libpom_deploy_plugins_autoregister.so" in readme
    # the python backend serves the engine too (pom_deploy.load opens it), its sidecar beside it
    assert main(["triton-repo", str(engine), "-o", str(tmp_path / "repo"), "--name", "py"]) == 0
    assert json.loads((tmp_path / "repo" / "py" / "1" / "model.engine.json").read_text())["gpu_name"] == "NVIDIA Jetson Thor"


def test_check_config_rejects_configs_that_do_not_fit_the_model(files):
    _, step = files
    spec, model_io, _ = read_model(step)
    good = parse_config(config_text(build_config(spec, RepoOptions(backend="onnxruntime"), "model.onnx")))
    check_config(good, spec, model_io)

    def broken(change):
        config = pb.ModelConfig()
        config.CopyFrom(good)
        change(config)
        return config

    cases = {
        "is TYPE_FP16, the model's is float32": lambda c: setattr(c.input[0], "data_type", pb.TYPE_FP16),
        "axis 2 is 17, the model's is 16": lambda c: c.input[0].dims.__setitem__(1, 17),
        "is not in the model": lambda c: setattr(c.output[0], "name", "out"),
        "is not an implicit state of the config": lambda c: c.sequence_batching.state.pop(),
        "needs one zero initial_state": lambda c: setattr(c.sequence_batching.state[0].initial_state[0], "zero_data", False),
        "has 4 dims": lambda c: c.sequence_batching.state[0].dims.append(1),
    }
    for message, change in cases.items():
        with pytest.raises(ServingError, match=message):
            check_config(broken(change), spec, model_io)
    with pytest.raises(ServingError, match="does not parse as Triton's ModelConfig"):
        parse_config('name: "x" max_batch_size: "eight"')
    with pytest.raises(ServingError, match="does not parse"):
        parse_config('name: "x" sequence_batching { bogus_field: 1 }')


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, files, capsys):
    full, step = files
    repo = tmp_path / "repo"
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Relu", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), foreign)
    engine_without_sidecar = tmp_path / "bare.engine"
    engine_without_sidecar.write_bytes(b"x")
    cases = [
        ([str(tmp_path / "missing.onnx")], "missing.onnx: no such file"),
        ([str(foreign)], "has no pom-deploy metadata"),
        ([str(step), "--backend", "tensorrt"], "--backend tensorrt serves TensorRT engines"),
        ([str(engine_without_sidecar), "--backend", "tensorrt"], "has no pom-deploy sidecar"),
        ([str(step), "--max-batch", "65"], "above the largest batch the model was exported/built for (64)"),
        ([str(step), "--max-batch", "0"], "the oldest strategy batches sequences"),
        ([str(step), "--name", "../escape"], "--name '../escape'"),
        ([str(step), "--instances", "0"], "--instances must be >= 1"),
        ([str(fake_engine(tmp_path, step)), "--backend", "tensorrt", "--device", "cpu"], "TensorRT engines run on GPUs only"),
        ([str(fake_engine(tmp_path, step)), "--backend", "onnxruntime"], "is a TensorRT engine; serve it with --backend tensorrt"),
    ]
    for argv, message in cases:
        assert main(["triton-repo", *argv, "-o", str(repo)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
        assert not repo.exists()
    assert main(["triton-repo", str(step), "-o", str(tmp_path / "no" / "repo")]) == 1
    assert "output directory" in capsys.readouterr().err

    assert main(["triton-repo", str(full), "-o", str(repo)]) == 0
    before = (repo / "pom" / "config.pbtxt").read_text()
    assert main(["triton-repo", str(step), "-o", str(repo)]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    assert (repo / "pom" / "config.pbtxt").read_text() == before
    assert main(["triton-repo", str(step), "-o", str(repo), "--force"]) == 0
    assert "sequence_batching" in (repo / "pom" / "config.pbtxt").read_text()
    assert sorted(p.name for p in repo.iterdir()) == ["pom"]  # no staging or old folder left
    shutil.rmtree(repo)


def test_plan_groups_batches_distinct_sequences_and_keeps_each_sequence_in_order():
    a, b = ("tokens", (8, 16)), ("tokens", (3, 16))
    keys = [(1, a), (2, a), (1, a), (3, b), (2, a), (4, a)]
    groups = plan_groups(keys)
    assert sorted(i for g in groups for i in g) == list(range(len(keys)))
    position = {i: n for n, g in enumerate(groups) for i in g}
    for group in groups:
        assert len({keys[i][0] for i in group}) == len(group) and len({keys[i][1] for i in group}) == 1
    for first, later in ((0, 2), (1, 4)):  # same sequence: the earlier request runs in an earlier group
        assert position[first] < position[later]
    assert groups[0] == [0, 1, 5]
    assert plan_groups([(None, a), (None, a), (None, b)]) == [[0, 1], [2]]  # full graphs: by shape only


def _apply(store, sequence, start=False, end=False, step=None, batch=1, digest="d"):
    """Plan and commit one step the way the python model does; returns the plan."""
    plan = store.plan(sequence, start, step, batch, digest)
    if plan.replay is None:
        count = next(iter(plan.state.values())) + 1
        store.commit(sequence, end, Stream(batch, {"past.0.count": count}, plan.step, digest, {"output": count.copy()}))
    return plan


def test_sequence_store_never_refuses_a_start_and_gives_way_least_recently_used_first():
    """Triton admits a START only into a free slot; the store, sized to the slots, makes room by
    dropping the stream used longest ago (one Triton has timed out), whatever its own clock says."""
    store = SequenceStore(2, lambda batch: {"past.0.count": np.zeros((batch,), np.int64)})
    _apply(store, 1, start=True)
    _apply(store, 2, start=True)
    _apply(store, 1)  # 2 is now the least recently used
    _apply(store, 3, start=True)
    assert list(store.streams) == [1, 3]
    with pytest.raises(SequenceError, match="no state: send its chunk again with sequence_start"):
        _apply(store, 2)
    with pytest.raises(SequenceError, match="started with batch 1"):
        _apply(store, 1, batch=2)
    _apply(store, 1, end=True)
    assert list(store.streams) == [3]


def test_sequence_ids_are_whole_keys():
    """Ids that share their first 8 serialized bytes, and an int and a str of one spelling, are distinct."""
    store = SequenceStore(8, lambda batch: {"past.0.count": np.zeros((batch,), np.int64)})
    for sequence in ("stream_000001", "stream_000002", 7, "7", 2**64 - 1, 2**64 - 2):
        _apply(store, sequence, start=True)
    _apply(store, "stream_000001")
    assert store.streams["stream_000001"].state["past.0.count"][0] == 2
    assert all(store.streams[s].state["past.0.count"][0] == 1 for s in ("stream_000002", 7, "7", 2**64 - 1, 2**64 - 2))


def test_step_numbers_make_a_retry_a_replay_and_refuse_gaps_and_second_writers():
    store = SequenceStore(4, lambda batch: {"past.0.count": np.zeros((batch,), np.int64)})
    _apply(store, 9, start=True, step=0, digest="a")
    assert _apply(store, 9, start=True, step=0, digest="a").replay["output"][0] == 1  # a retried START is not a restart
    _apply(store, 9, step=1, digest="b")
    replay = _apply(store, 9, step=1, digest="b")  # the client timed out after step 1 was applied
    assert replay.replay["output"][0] == 2 and store.streams[9].state["past.0.count"][0] == 2
    with pytest.raises(SequenceError, match="already applied with other inputs: is another client"):
        _apply(store, 9, step=1, digest="c")
    with pytest.raises(SequenceError, match="step 3 .* out of order: the next step is 2"):
        _apply(store, 9, step=3, digest="c")
    with pytest.raises(SequenceError, match="sequence_start request is step 0"):
        _apply(store, 9, start=True, step=4)
    assert _apply(store, 9, step=2, digest="c").step == 2
    _apply(store, 9, start=True, digest="e")  # a START without a number restarts the stream (Triton's behaviour)
    assert store.streams[9].step == 0 and store.streams[9].state["past.0.count"][0] == 1
    assert step_number({}) is None and step_number({"step": 3}) == 3
    for bad in (-1, "2", 1.5, True):
        with pytest.raises(SequenceError, match="must be an integer >= 0"):
            step_number({"step": bad})


def test_serve_loads_only_the_models_the_bundled_server_can_run(tmp_path, files):
    _, step = files
    repo = tmp_path / "repo"
    for backend in ("python", "onnxruntime"):
        assert main(["triton-repo", str(step), "-o", str(repo), "--backend", backend, "--name", f"m_{backend}", "--device", "cpu"]) == 0
    (repo / "notes").mkdir()
    load, skipped = servable_models(repo)
    assert load == ["m_python"]
    assert skipped == {"m_onnxruntime": "onnxruntime backend, not in the bundled tritonserver (python only)", "notes": "no config.pbtxt"}
    shutil.rmtree(repo / "m_python")
    with pytest.raises(ServingError, match="no model the bundled tritonserver can run .*m_onnxruntime: onnxruntime backend"):
        servable_models(repo)


def test_max_chunk_is_within_the_export_profile(tmp_path, files, capsys):
    _, step = files
    largest = read_model(step)[0].data_inputs[0].max_shape[1]
    assert main(["triton-repo", str(step), "-o", str(tmp_path / "repo"), "--max-chunk", "64"]) == 0
    assert read_config(tmp_path / "repo" / "pom").parameters["max_chunk"].string_value == "64"
    for bad in (0, largest + 1):
        assert main(["triton-repo", str(step), "-o", str(tmp_path / "bad"), "--max-chunk", str(bad)]) == 1
        assert f"--max-chunk must be within 1..{largest}" in capsys.readouterr().err
    assert main(["triton-repo", str(step), "-o", str(tmp_path / "bad"), "--max-chunk", "8", "--backend", "onnxruntime"]) == 1
    assert "--max-chunk applies to step graphs on the python backend" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


class _ZeroingStub:
    """pb_utils as the tritonserver 2.51 stub behaves with numpy 2.x: a round trip reads back zeros."""

    class Tensor:
        def __init__(self, name, array):
            self.array = array

        def to_dlpack(self):
            return self.array

        def as_numpy(self):
            return self.array

        @classmethod
        def from_dlpack(cls, name, capsule):
            return cls(name, np.zeros_like(capsule))


def test_self_check_refuses_a_stub_that_loses_tensor_data():
    with pytest.raises(RuntimeError, match="would return empty tensors"):
        self_check(_ZeroingStub)

    class Faithful(_ZeroingStub):
        class Tensor(_ZeroingStub.Tensor):
            @classmethod
            def from_dlpack(cls, name, capsule):
                return cls(name, capsule.copy())

    self_check(Faithful)


def test_serve_without_a_repository_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such model repository" in err and len(err.strip().splitlines()) == 1
