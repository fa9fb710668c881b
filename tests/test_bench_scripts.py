"""The benchmark scripts' plots: a missing matplotlib (the ``bench`` extra) stops a run with one
line before it measures anything, and ``--quick`` smoke runs never write the docs' figures."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import _bench_common as C  # noqa: E402  (the scripts' folder is not a package)


def test_quick_runs_plot_into_their_work_dir_and_full_runs_into_the_docs(tmp_path):
    assert C.plot_path(None, True, tmp_path, "bench.png") == tmp_path / "bench.png"
    assert C.plot_path(None, False, tmp_path, "bench.png") == C.REPO / "docs" / "img" / "bench.png"
    assert C.plot_path("", False, tmp_path, "bench.png") is None
    assert C.plot_path("x.png", True, tmp_path, "bench.png") == Path("x.png")


@pytest.mark.parametrize("script", ["bench_export.py", "bench_streaming.py"])
def test_missing_matplotlib_is_one_line_before_the_run(tmp_path, script):
    blocker = tmp_path / "site" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), str(SCRIPTS.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick", "--work-dir", str(tmp_path / "work")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [
        "error: the plot needs matplotlib, the 'bench' extra: pip install -e '.[bench]' (or --plot '' for no plot)"]
    assert not (tmp_path / "work").exists()  # stopped before its work dir, let alone a measurement
