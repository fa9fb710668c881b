"""The shell recipes of README.md and docs/*.md run as written, so that they cannot go stale.

The ```console blocks are parsed when the test runs: every ``$ `` line is a command (a trailing
``\\`` continues it), ``# ...`` is its comment, and a comment's ``-> FILE`` names a file the
command must write. Each page runs in a folder of its own that starts with small stand-ins for
the files the docs presuppose (``model.pt``: the zoo's small ``video_pom`` checkpoint;
``weights.pt`` + ``arch.yaml``: the PoMv2 layer state_dict of docs/export.md's ``--arch``
example; ``frames.npy``: five frames for that video model). A page that uses a file another page
writes (docs/streaming.md runs the README's ``model.step.onnx``) gets that file copied in, and an
export command that an earlier page ran with the same inputs has its files copied rather than
exporting again (the test's cost). Synopsis lines run without their ``[optional]`` parts.

Not run, with the reason printed: installs, the test suite itself, benchmarks, and what needs
TensorRT, Docker or a GPU. The commands run through their entry points' ``main()`` in this
process, except ``pom-deploy serve``: it starts once per run, as a process, in docs/serving.md's
opening recipe (on free ports on 127.0.0.1, stopped with SIGTERM as its docs say, killed if it does
not stop); the README's ``serve`` serves a subset of that repository's kinds of model.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import spread_coefficients
from pom_deploy import save_checkpoint
from pom_deploy.models import PoMv2
from pom_deploy.models.zoo import create_zoo_model

REPO = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))
CLI = {"pom-export": "export", "pom-deploy": "deploy"}
SERVING_PAGE = "docs/serving.md"
SERVE_STARTUP_S = 180
OUTPUT_FLAGS = ("-o", "--output", "--dir")
SERVE_EXTRA = all(importlib.util.find_spec(m) is not None for m in ("tritonclient", "pytriton"))

SKIPS = [  # (does it apply to the command's words, why it is not run)
    (lambda w: w[:2] == ["pip", "install"], "installs packages (CI installs the same extras before the tests)"),
    (lambda w: "pytest" in w, "the test suite itself"),
    (lambda w: "ruff" in w, "the linter: .ci/run runs it before the tests"),
    (lambda w: "evil.pt2" in w, "a malicious archive, shown refused: tests/test_security.py runs such files"),
    (lambda w: any("scripts/bench_" in x for x in w), "a benchmark: minutes of both CPUs (docs/benchmarks.md reports its runs)"),
    (lambda w: w[0] == "docker", "needs Docker, NVIDIA's Triton container and a GPU"),
    (lambda w: w[0] == "pom-export" and len(w) > 1 and w[1] in ("lm.pt", "classifier.pt2", "net.pt"),
     "the reader's own model (no config): tests/test_user_models.py exports such models with the same flags"),
    (lambda w: w[:2] == ["pom-deploy", "build-ops"],
     "compiles native libraries for minutes and needs onnxruntime's C API header (DIR) or nvcc; "
     "tests/test_native_tools.py and tests/test_cpu_kernel.py run it"),
    (lambda w: "build-engine" in w or "--engine" in w or "tensorrt" in w or any(x.endswith(".engine") for x in w),
     "needs TensorRT and a GPU"),
    (lambda w: w[:2] in (["pom-deploy", "triton-repo"], ["pom-deploy", "serve"]) and not SERVE_EXTRA,
     "needs the serve extra (tritonclient, nvidia-pytriton), not installed"),
]


def console_commands(text: str) -> list[tuple[list[str], str]]:
    """(words, comment) of each ``$`` command in the page's ```console blocks."""
    commands = []
    for block in re.findall(r"^```console\n(.*?)^```", text, flags=re.M | re.S):
        lines, current = [], None
        for line in block.splitlines():
            if line.startswith("$ "):
                current = line[2:]
                lines.append(current)
            elif current is not None and lines[-1].rstrip().endswith("\\"):
                lines[-1] = lines[-1].rstrip()[:-1] + " " + line.strip()
            # other lines are a command's printed output
        for line in lines:
            commands.append((shlex.split(line, comments=True), line.split(" #", 1)[1] if " #" in line else ""))
    return commands


def without_optional(words: list[str]) -> list[str]:
    """A synopsis without its ``[--option value]`` parts."""
    kept, optional = [], False
    for word in words:
        optional = optional or word.startswith("[")
        if not optional:
            kept.append(word)
        optional = optional and not word.endswith("]")
    return kept


def chained(words: list[str]) -> list[list[str]]:
    """The commands of ``a && b``, run in turn."""
    parts = [[]]
    for word in words:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    return parts


def promised_files(comment: str) -> list[str]:
    """The files a comment says the command writes (``-> model.onnx``)."""
    return [m.rstrip(",;)") for m in re.findall(r"->\s*(\S+)", comment)]


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stand-ins")
    torch.manual_seed(0)
    save_checkpoint(create_zoo_model("video_pom"), folder / "model.pt")  # dim 32, 2 layers, 8-token frames
    torch.save(spread_coefficients(PoMv2(512, 3, 2, 1, 8)).state_dict(), folder / "weights.pt")
    (folder / "arch.yaml").write_text("name: PoMv2\nconfig: {dim: 512, degree: 3, expand: 2, n_groups: 1, n_sel_heads: 8}\n")
    np.save(folder / "frames.npy", np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32))
    return folder


class RecipeRunner:
    """Runs pages' recipes; shares what one page wrote with the pages after it."""

    def __init__(self, root: Path, stand_ins: Path):
        self.root, self.stand_ins = root, stand_ins
        self.written: dict[str, Path] = {}  # file name -> where a page's command wrote it
        self.exports: dict[tuple[str, ...], dict[str, Path]] = {}  # pom-export command -> the files it wrote
        self.pages: dict[str, list[tuple[str, str]]] = {}  # page -> (command, what happened)
        self.failed: dict[str, str] = {}  # page -> why its recipes failed
        # for the one command run as a process (serve): this checkout's package, one thread per onnxruntime session
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": "1"}

    def run_page(self, page: str) -> list[tuple[str, str]]:
        if page in self.failed:
            pytest.fail(f"{page}'s recipes failed earlier: {self.failed[page]}")
        if page in self.pages:
            return self.pages[page]
        try:
            return self._run_page(page)
        except BaseException as exc:
            self.failed[page] = str(exc)[:3000] or type(exc).__name__
            raise

    def _run_page(self, page: str) -> list[tuple[str, str]]:
        folder = self.root / page.replace("/", "_")
        shutil.copytree(self.stand_ins, folder)
        log, ran = [], set()
        self.pages[page] = log
        for words, comment in console_commands((REPO / page).read_text()):
            words = without_optional(words)
            text = shlex.join(words)
            reason = next((why for applies, why in SKIPS if applies(words)), None)
            if reason is None and words[:2] == ["pom-deploy", "serve"] and page != SERVING_PAGE:
                reason = f"one server start per run: {SERVING_PAGE}'s recipe serves a repository with this kind of model"
            if reason is None and text in ran:
                reason = "the same command ran above"
            if reason is not None:
                log.append((text, f"not run: {reason}"))
                continue
            ran.add(text)
            log.append((text, "; ".join(self._run(part, folder) for part in chained(words))))
            for name in promised_files(comment):
                assert (folder / name).exists(), f"{page}: `{text}` says it writes {name}; it did not"
        return log

    def _run(self, words: list[str], folder: Path) -> str:
        if words[0] not in CLI:
            pytest.fail(f"a recipe runs `{words[0]}`, which this test does not know how to run: {shlex.join(words)}")
        self._copy_inputs(words, folder)
        key = tuple(words)
        if words[0] == "pom-export" and key in self.exports:
            for name, source in self.exports[key].items():
                shutil.copy(source, folder / name)
            return "its files copied from the same export on an earlier page"
        if words[:2] == ["pom-deploy", "serve"]:
            command = [sys.executable, "-c", "import sys; from pom_deploy.cli.deploy import main; sys.exit(main())", *words[1:]]
            return serve_once(command, folder, self.env)
        before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
        # The entry point's own main() in this process (its printed output is in pytest's report):
        # the same code as the installed command, without a new interpreter and imports per command.
        main = importlib.import_module(f"pom_deploy.cli.{CLI[words[0]]}").main
        cwd = os.getcwd()
        os.chdir(folder)
        try:
            code = main(words[1:])
        finally:
            os.chdir(cwd)
        assert code == 0, f"`{shlex.join(words)}` failed with exit code {code} (its output is in the captured stdout/stderr)"
        new = {p for p in folder.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns}
        for path in new:
            self.written.setdefault(str(path.relative_to(folder)), path)
        if words[0] == "pom-export":
            self.exports[key] = {str(p.relative_to(folder)): p for p in new}
        return "ran"

    def _copy_inputs(self, words: list[str], folder: Path) -> None:
        """Files the command reads that an earlier page wrote (not those it writes)."""
        for previous, word in zip([""] + words, words):
            if previous not in OUTPUT_FLAGS and not (folder / word).exists() and word in self.written:
                shutil.copy(self.written[word], folder / word)


def serve_once(command: list[str], folder: Path, env: dict) -> str:
    """Start ``pom-deploy serve`` on free ports; every python-backend model of the repository must
    become ready; then stop it with SIGTERM (killed if it does not stop)."""
    from pom_deploy.serving.server import free_port

    http_port, grpc_port = free_port(), free_port()
    log_path = folder / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([*command, "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--exit-timeout", "5"],
                                   cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        repository = folder / command[command.index("serve") + 1]
        python_models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt") if 'backend: "python"' in p.read_text())
        assert python_models, f"{repository} holds no python-backend model to serve"
        deadline = time.monotonic() + SERVE_STARTUP_S
        # ready: Triton says every python model is, and serve says it is serving (a stop sent while
        # serve still waits inside its start is an interrupted start, exit 130, not a stop)
        while not (all(_ready(http_port, f"models/{name}") for name in python_models) and b"serving" in log_path.read_bytes()):
            assert process.poll() is None, f"`pom-deploy serve` exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready within {SERVE_STARTUP_S} s:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return f"served {', '.join(python_models)}, then stopped"


def _ready(port: int, what: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/{what}/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def runner(tmp_path_factory, stand_ins) -> RecipeRunner:
    return RecipeRunner(tmp_path_factory.mktemp("recipes"), stand_ins)


@pytest.mark.parametrize("page", [p for p in PAGES if "```console" in (REPO / p).read_text()])
def test_shell_recipes_run_as_written(page, runner):
    if page != "README.md":
        runner.run_page("README.md")  # the pages build on the README's files
    log = runner.run_page(page)
    print("\n".join(f"{page}: {text}: {what}" for text, what in log))
    assert log, f"{page} has a console block but no command in it"
