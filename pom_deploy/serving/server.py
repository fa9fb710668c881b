"""Start and stop the ``tritonserver`` that the ``nvidia-pytriton`` wheel bundles (the ``serve`` extra).

That wheel ships Triton 2.51 with its python backend only (no onnxruntime or TensorRT backend),
and it runs on CPU-only machines: enough to serve a python-backend repository locally and in tests.
A repository may also hold models for other backends (``triton-repo`` writes them side by side):
the server loads only the python ones (``--model-control-mode=explicit`` with one ``--load-model``
each) and reports the others as skipped, instead of failing on them.
The server runs in its own process group, listens on 127.0.0.1 by default, and ``stop()`` ends the
whole group. The python backend's stub embeds the interpreter found first on ``PATH``, so this
environment's ``bin/`` goes first (the stub then takes its standard library from here), and the
generated model.py adds this environment's site folders (``_site_folders``) before it imports
pom_deploy: a plain (non-venv) Python's site-packages is otherwise not on the stub's path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import ServingError
from .triton_config import parse_config
from .triton_model import SITE_FOLDERS_VARIABLE

STARTUP_TIMEOUT_S = 120.0
EXIT_TIMEOUT_S = 30  # Triton's own default: how long a stopping server lets open sequences and requests finish
KILL_MARGIN_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port that nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class BundledServer:
    """Where the wheel keeps the server binary, its libraries and the python backend."""

    binary: Path
    libraries: Path
    python_backend: Path
    python_stub: Path


def find_bundled_server() -> BundledServer:
    """The files of the ``nvidia-pytriton`` wheel, found without importing pytriton (its import pulls in
    its whole client stack); the layout is the one ``pytriton.utils.distribution`` describes."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServingError("no tritonserver here: install the serve extra (pip install 'pom-deploy[serve]'), "
                           "or run the repository in NVIDIA's Triton container")
    package = Path(list(spec.submodule_search_locations)[0])
    root = package / "tritonserver"
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    libraries = package.parent / "nvidia_pytriton.libs"
    bundled = BundledServer(root / "bin" / "tritonserver", libraries if libraries.is_dir() else root / "external_libs",
                            root / "backends" / "python", root / "python_backend_stubs" / version / "triton_python_backend_stub")
    for path in (bundled.binary, bundled.python_backend, bundled.python_stub):
        if not path.exists():
            raise ServingError(f"the bundled tritonserver is incomplete ({path} is missing; no stub for Python {version}?)")
    return bundled


@dataclass
class TritonServer:
    """A running server: its ports, its log, and ``stop()``."""

    process: subprocess.Popen
    host: str
    http_port: int
    grpc_port: int
    workdir: Path
    log_path: Path
    exit_timeout_s: float = EXIT_TIMEOUT_S
    skipped: dict[str, str] = field(default_factory=dict)  # model -> why the bundled server does not load it
    _stopped: bool = field(default=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGINT the process group: Triton stops taking new sequences and lets the open ones and the
        requests in flight finish, for ``exit_timeout_s`` at most; SIGKILL whatever is left after that."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.alive():
                _signal_group(self.process, signal.SIGINT)
                try:
                    self.process.wait(self.exit_timeout_s + KILL_MARGIN_S)
                except subprocess.TimeoutExpired:
                    pass
            _signal_group(self.process, signal.SIGKILL)  # python stubs left in the group go too
            self.process.wait()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: the kernel kills the server when the process that started it dies,
    so a crashed or killed caller (``pom-deploy serve``, a test run) leaves no server behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _site_folders() -> list[str]:
    """This interpreter's site-packages, for the stub (read by the generated model.py).

    The stub embeds the libpython bundled with the server, which ignores PYTHONPATH and whose own
    (Debian) ``site`` module adds a virtual environment's site-packages but not those of a plain
    interpreter such as a pyenv or conda Python (measured: numpy was not importable there). The folder
    that holds the pom_deploy imported here comes too, so the stub runs the same pom_deploy when that is
    a checkout on PYTHONPATH (an editable install's finder would otherwise give it another one).
    """
    return [str(Path(__file__).resolve().parents[2]), *site.getsitepackages()]


def servable_models(repository: Path) -> tuple[list[str], dict[str, str]]:
    """The models of ``repository`` the bundled server can run (python backend), and why each other is skipped.
    A config that does not parse is kept, so that Triton's own load error names what is wrong with it."""
    load, skipped = [], {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        config_path = folder / "config.pbtxt"
        if not config_path.is_file():
            skipped[folder.name] = "no config.pbtxt"
            continue
        try:
            config = parse_config(config_path.read_text())
        except ServingError:
            load.append(folder.name)
            continue
        backend = config.backend or config.platform
        if backend == "python":
            load.append(folder.name)
        else:
            skipped[folder.name] = f"{backend or 'no'} backend, not in the bundled tritonserver (python only)"
    if not load:
        found = "; ".join(f"{name}: {why}" for name, why in skipped.items()) or "it has no model folders"
        raise ServingError(f"{repository}: no model the bundled tritonserver can run ({found})")
    return load, skipped


def start_server(repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = None,
                 grpc_port: int | None = None, timeout_s: float = STARTUP_TIMEOUT_S, exit_timeout_s: int = EXIT_TIMEOUT_S,
                 verbose: int = 0) -> TritonServer:
    """Start the bundled tritonserver on ``repository``; returns once every python-backend model is ready
    (the others are in ``skipped``).

    Raises ServingError with the server's first error line when it exits or is not ready in time
    (the process group is stopped first, so nothing is left running).
    """
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise ServingError(f"{repository}: no such model repository")
    bundled = find_bundled_server()
    load, skipped = servable_models(repository)
    workdir = Path(tempfile.mkdtemp(prefix="pom-triton-"))
    backends = workdir / "backends"
    shutil.copytree(bundled.python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(bundled.python_stub, backends / "python" / "triton_python_backend_stub")
    http_port = http_port or free_port(host)
    grpc_port = grpc_port or free_port(host)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(bundled.libraries), env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env[SITE_FOLDERS_VARIABLE] = os.pathsep.join(_site_folders())
    command = [
        str(bundled.binary), f"--model-repository={repository}", f"--backend-directory={backends}",
        f"--http-address={host}", f"--http-port={http_port}", f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        "--allow-metrics=false", "--exit-on-error=true", "--strict-readiness=true", "--disable-auto-complete-config",
        f"--exit-timeout-secs={exit_timeout_s}", f"--log-verbose={verbose}", "--model-control-mode=explicit",
        *(f"--load-model={name}" for name in load),
    ]
    log_path = workdir / "tritonserver.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=workdir, start_new_session=True, preexec_fn=_die_with_parent)
    server = TritonServer(process, host, http_port, grpc_port, workdir, log_path, exit_timeout_s, skipped)
    try:
        _wait_ready(server, timeout_s)
    except ServingError as exc:
        log_text = server.log()
        server.stop()
        raise ServingError(f"{exc}: {_first_error(log_text)}") from None
    except BaseException:
        server.stop()
        raise
    return server


def _wait_ready(server: TritonServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    url = f"http://{server.http_url}/v2/health/ready"
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServingError(f"tritonserver exited with code {server.process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ServingError(f"tritonserver was not ready within {timeout_s:.0f}s")


BENIGN_ERRORS = ("CudaDriverHelper has not been initialized",)  # logged by every start on a machine without a GPU


def _first_error(log_text: str) -> str:
    """The line of the server log that says what went wrong: a model's load failure first, else the
    first error line, else the last line (Triton quotes Python tracebacks with literal \\n: cut there)."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E") and not any(b in line for b in BENIGN_ERRORS)]
    failed = [line[line.index("failed to load"):] for line in errors if "failed to load" in line]
    line = (failed or errors or lines or ["no output"])[0]
    return line.split("\\n")[0].strip(' "')
