"""Runs ``python -m MODULE ...`` from the repository root, as a user does, for the bench tests:
a suite sets its threads before JAX is imported, so it runs in a fresh process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m *args`` in the repository root; asserts that it succeeds."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def quick_outputs(tmp_path_factory, suite: str) -> tuple[Path, str]:
    """``python -m bench SUITE --quick`` into a fresh folder: (the folder, what it printed)."""
    out = tmp_path_factory.mktemp(suite)
    return out, run_module("bench", suite, "--quick", "--out", str(out)).stdout
