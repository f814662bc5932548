"""Smoke tests of ``python -m bench.inverse`` and ``python -m bench.training``: outputs and
correctness only, never timings (they depend on the machine).

Each benchmark runs in a subprocess, as a user runs it, on its smallest setting. The helpers
that decide what the tables say (the damping rule, the timing budget, the loss look-ups) are
tested directly against hand-computed values.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import inverse, training

ROOT = Path(__file__).resolve().parent.parent
EXACT = ("cg", "minres")  # solved to the tolerance: small errors against the reference


def run_module(module: str, out: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", module, *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def inverse_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("inverse")
    stdout = run_module("bench.inverse", out, "--tiny")
    data = json.loads((out / "inverse.json").read_text())
    return out, stdout, data


def test_inverse_writes_its_outputs(inverse_run):
    out, stdout, data = inverse_run
    text = (out / "inverse.md").read_text()
    assert text.strip() in stdout  # the tables printed are the ones written
    for section in ("## GGN", "## Hessian"):
        assert section in text
    assert "| implementation | best (s) |" in text
    assert data["meta"]["tiny"] and data["meta"]["jax"]


def test_inverse_problems_are_well_posed(inverse_run):
    _, _, data = inverse_run
    ggn, hessian = data["curvatures"]["ggn"], data["curvatures"]["hessian"]
    assert ggn["lam"] == pytest.approx(inverse.DAMPING_FACTOR * ggn["eigenvalues"]["lambda_max"])
    eig = hessian["eigenvalues"]
    assert eig["lambda_min"] < 0  # the Hessian is indefinite at these weights: shifted
    assert hessian["lam"] + eig["lambda_min"] == pytest.approx(
        inverse.DAMPING_FACTOR * eig["lambda_max"]
    )
    for curvature in (ggn, hessian):
        scales = curvature["lissa_scales"]
        assert scales["largest batch"] > curvature["eigenvalues"]["batch_lambda_max"]
        assert "relative residual" in curvature["reference"]


def test_inverse_rows_are_sane(inverse_run):
    _, _, data = inverse_run
    rows = {(r["curvature"], r["impl"]): r for r in data["rows"]}
    for curvature in ("ggn", "hessian"):
        for method in EXACT:
            r = rows[curvature, f"jaxhvp.solve: {method}"]
            assert r["status"] == "SUCCESS", r
            assert r["rel_error"] < 1e-3 and r["residual"] < 1e-4, r
            assert r["iterations"] > 0 and r["products"] == r["iterations"] + 1
            assert r["best_s"] > 0 and r["compile_s"] > 0
        lissa = next(r for (c, name), r in rows.items() if c == curvature and "lissa" in name)
        assert lissa["status"] == "NOT_CONVERGED" and lissa["iterations"] == inverse.LISSA_DEPTH
        assert 0 < lissa["rel_error"] < 10
    nystrom = f"jaxhvp.solve: cg + Nyström (rank {inverse.RANK})"
    assert rows["ggn", nystrom]["status"] == "SUCCESS"
    assert rows["ggn", nystrom]["rel_error"] < 1e-3
    # The Nyström factorisation needs a positive semi-definite operator: the indefinite
    # Hessian is reported as NONFINITE, with no iterate.
    assert rows["hessian", nystrom]["status"] == "NONFINITE"
    for curvature in ("ggn", "hessian"):
        assert rows[curvature, "torch-influence"]["status"] == "skipped"
        assert rows[curvature, "torch-influence"]["notes"]
    assert rows["ggn", "pyDVL"]["status"] == "skipped"  # pyDVL has no GGN
    pydvl = [r for (c, name), r in rows.items() if c == "hessian" and name.startswith("pyDVL")]
    if pydvl[0]["status"] == "skipped":  # not importable here: says why
        assert "pyDVL" in pydvl[0]["notes"]
    else:
        cg = next(r for r in pydvl if "CgOperator" in r["impl"])
        assert cg["rel_error"] < 1e-3 and cg["residual"] < 1e-4, cg


def test_damping_shifts_only_an_indefinite_hessian():
    eigen = {"lambda_max": 2.0, "lambda_min": -0.5}
    assert inverse.damping("hessian", eigen) == pytest.approx(0.5 + 2e-3)
    assert inverse.damping("ggn", eigen) == pytest.approx(2e-3)
    assert inverse.damping("hessian", {"lambda_max": 2.0, "lambda_min": 0.1}) == 2e-3


def test_time_calls_keeps_to_its_budget():
    calls = []

    def call():
        calls.append(1)
        return len(calls)

    times, result = inverse.time_calls(call, repeat=3, budget=10.0)
    assert len(times) == 3 and result == 4  # a first call, then the timed ones

    def slow():
        import time

        time.sleep(0.06)
        return "done"

    times, result = inverse.time_calls(slow, repeat=5, budget=0.1)
    assert len(times) == 1 and result == "done"  # the first call took over half the budget


@pytest.fixture(scope="module")
def training_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("training")
    run_module("bench.training", out, "--quick")
    return out, json.loads((out / "training.json").read_text())


def test_training_writes_its_outputs(training_run):
    out, data = training_run
    text = (out / "training.md").read_text()
    assert "## Best run of each method" in text and "Lowest loss after" in text
    assert (out / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data["best"]) == len(training.METHODS)


def test_training_runs_learn(training_run):
    _, data = training_run
    epochs = data["meta"]["epochs"]
    for run in data["runs"]:
        losses = run["loss"]
        assert not run["diverged"] and all(math.isfinite(v) for v in losses), run["method"]
        assert losses[-1] < losses[0], run["method"]  # every method lowers the loss
        assert run["epochs"][-1] == pytest.approx(epochs)
        assert run["steps"][-1] == epochs * data["meta"]["points"] // run["batch"]
        assert np.all(np.diff(run["wall_s"]) > 0) and run["compile_s"] > 0


def test_loss_lookups_take_the_last_measurement_before():
    run = training.Run("m", "lr", 0.1, 256, 1.0)
    run.steps, run.epochs, run.wall_s, run.loss = [0, 4, 8], [0, 1, 2], [0, 0.5, 1.0], [3, 2, 1]
    assert run.loss_at(epoch=1) == 2 and run.loss_at(epoch=1.5) == 2
    assert run.loss_at(wall=0.99) == 2 and run.loss_at(wall=1.0) == 1
    assert math.isnan(run.loss_at(wall=-1))
    assert run.final == 1
    run.diverged = True
    assert run.final == math.inf


def test_make_data_is_balanced_and_standardised():
    x, y = training.make_data(200)
    assert x.shape == (200, training.FEATURES) and x.dtype == np.float32
    assert np.bincount(y).tolist() == [20] * training.CLASSES
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-4)
