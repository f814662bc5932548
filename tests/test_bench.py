"""Smoke tests of the comparison benchmark (``python -m bench``): outputs and correctness only.

No timing is asserted: timings depend on the machine. The suite runs in a subprocess, as CI
runs it, so that its thread settings apply before JAX is imported.
"""

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from bench import impls, interleaved, measure, problems, report
from bench.__main__ import selected

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = {
    "problem",
    "impl",
    "median_s",
    "p20_s",
    "p80_s",
    "per_grad",
    "compile_s",
    "peak_mem_mb",
    "max_rel_err",
    "status",
}
TOLERANCE = 1e-3
# The plots need matplotlib, which the bench extra installs and the test extra may not.
PLOTS = ["time_per_hvp.png", "hvp_grad_ratio.png"] if importlib.util.find_spec("matplotlib") else []


def run_bench(out: Path, *args: str) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "--quick",
        "--check",
        "--max-wait",
        "0",
        "--out",
        str(out),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rel err" in proc.stdout  # the table was printed
    for name in ["results.csv", "results.json", *PLOTS]:
        assert (out / name).stat().st_size > 0, name
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows
    assert set(rows[0]) >= REQUIRED
    for row in rows:
        assert row["status"] == "ok", row
        assert float(row["max_rel_err"]) <= TOLERANCE, row
        assert row["impl"].startswith(("jaxhvp", "jax", "torch")), row
    meta = json.loads((out / "results.json").read_text())
    assert {"jax", "torch", "python", "threads", "cpu"} <= set(meta["machine"])
    assert len(meta["rows"]) == len(rows)
    return rows


def test_quick_suite_outputs_and_correctness(tmp_path):
    impls = [
        "jaxhvp.hvp",
        "jaxhvp.vhp",
        "jax.jit(jvp(grad))",
        "jax.jit(value+jvp(grad))",
        "jaxhvp.hvp[top-level f]",
        "jax.jit(jvp(grad))[top-level f]",
        "torch.autograd.functional.hvp",
        "torch.double-backward",
    ]
    rows = run_bench(
        tmp_path, "--problems", "rosenbrock10", "--impls", *(f"={name}" for name in impls)
    )
    names = [row["impl"] for row in rows]
    assert sorted(names) == sorted(["jax.grad", "torch.autograd.grad", *impls])  # + units
    for row in rows:
        assert math.isnan(float(row["peak_mem_mb"]))  # in-process rows: NaN, not a guess
        assert float(row["per_grad"]) > 0


def test_overhead_summary_divides_each_row_by_its_hand_written_jit():
    def row(impl, seconds):
        return {
            "problem": "p",
            "impl": impl,
            "median_s": seconds,
            "status": "ok",
            "kind": "overhead",
        }

    rows = [
        row("jaxhvp.hvp[top-level f]", 3.0),
        row("jax.jit(jvp(grad))[top-level f]", 2.0),
        row("jaxhvp.hvp", 5.0),
        row("jax.jit(jvp(grad))", 4.0),
        row("torch.autograd.functional.hvp", 50.0),
    ]
    summary = report.overhead_summary(rows)
    assert summary.startswith("p, per call: jaxhvp.hvp[top-level f] / ")
    assert "jax.jit(jvp(grad))[top-level f] = 1.50x" in summary
    assert "jaxhvp.hvp / jax.jit(jvp(grad)) = 1.25x" in summary
    assert "torch.autograd.functional.hvp / jaxhvp.hvp = 10.00x" in summary
    assert "fresh" not in summary  # rows that did not run are left out


def test_interleaved_comparisons():
    problem = problems.build("rosenbrock10", quick=True)
    modes = interleaved.modes(problem, target_s=0.0, min_rounds=2)
    assert modes["rounds"] == 2
    assert modes["best_mode"] in interleaved.MODES
    times = [modes[f"{m}_s"] for m in interleaved.MODE_ROWS]
    assert all(t > 0 for t in times)
    assert modes["auto_over_best"] == modes["auto_s"] / min(times[:3])
    overhead = interleaved.overhead(problem, target_s=0.0, min_rounds=2)
    ratios = [overhead[f"{name} / {base}"] for name, base in interleaved.OVERHEAD_PAIRS]
    for ratio, (name, base) in zip(ratios, interleaved.OVERHEAD_PAIRS, strict=True):
        assert ratio == overhead[f"{name}_s"] / overhead[f"{base}_s"]
    text = interleaved.markdown([modes], [overhead]).splitlines()
    assert text[4] == f"| rosenbrock10 | {ratios[0]:.2f}x | {ratios[1]:.2f}x | 2 |"
    assert text[-1].startswith(f"| rosenbrock10 | {modes['fwd-rev_s'] * 1e3:.4g} |")


def test_fresh_process_rows_measure_memory(tmp_path):
    rows = run_bench(
        tmp_path,
        "--problems",
        "rosenbrock10",
        "--memory",
        "--impls",
        "=jaxhvp.hvp",
        "=torch.autograd.functional.hvp",
    )
    assert len(rows) == 4
    for row in rows:
        assert float(row["peak_mem_mb"]) >= 0
        assert float(row["compile_s"]) > 0


def test_filters():
    names = ["jax.grad", "jax.jit(jvp(grad))", "jaxhvp.hvp", "jaxhvp.hvp(mode=auto)", "torch.x"]
    assert selected(names, ["jax"]) == ["jax.grad", "jax.jit(jvp(grad))"]
    assert selected(names, ["jaxhvp.hvp"]) == ["jaxhvp.hvp", "jaxhvp.hvp(mode=auto)"]
    assert selected(names, ["torch*,jax.grad"]) == ["jax.grad", "torch.x"]
    assert selected(names, ["=jaxhvp.hvp"]) == ["jaxhvp.hvp"]
    assert selected(names, None) == names


@pytest.mark.parametrize("name", ["rosenbrock10", "logreg"])
def test_problems_are_float32_agree_and_have_exact_references(name):
    """Even with x64 on (the autouse fixture), the benchmark's data stay float32; the JAX and
    torch losses agree; the analytic Hv equals JAX's float64 forward-over-reverse."""
    problem = problems.build(name, quick=True)
    view = problems.jax_view(problem, k=2)
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(view.params))
    assert all(v < 1e-5 for v in problems.check_agreement(problem).values())
    refs = problems.references(problem, k=2)
    assert problem.analytic_hvp is not None
    p64 = {n: x.astype(np.float64) for n, x in problem.params.items()}
    d64 = {n: x.astype(np.float64) for n, x in problem.data.items()}
    vs = {n: x.astype(np.float64) for n, x in problem.vectors(2).items()}
    with jax.enable_x64(True):
        grad = jax.grad(problem.jax_loss)
        for i in range(2):
            v = {n: x[i] for n, x in vs.items()}
            hv = jax.jvp(lambda p: grad(p, d64), (p64,), (v,))[1]
            for n in problem.names:
                np.testing.assert_allclose(refs["hvp"][n][i], hv[n], rtol=1e-9, atol=1e-9)


GGN_ROWS = [impl.name for impl in impls.ggn_rows()]
# On the transformer: the output-space product on 3D outputs, and BackPACK's refusal.
TRANSFORMER_ROWS = ["jaxhvp.gnvp", "curvlinops.GGNLinearOperator[apply]", "backpack.DiagGGNExact"]


def _tiny(name):
    if name == "mlp":
        return problems._mlp(True, batch=8, widths=(12, 8, 8, 3))
    return problems._transformer(True, width=16, seq=4)


# torch's forward-mode AD loads its jvp decompositions with torch.jit.script, which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("name", "names"), [("mlp", GGN_ROWS), ("transformer", TRANSFORMER_ROWS)])
def test_ggn_rows_run_and_agree(name, names):
    """The GGN rows on a tiny MLP (all) and transformer, against their references (the
    float64 GGN product and exact diagonal; Hutchinson with the row's own probes): jaxhvp,
    curvlinops and BackPACK within 1e-5 of the same references, so of each other; the
    unsupported row skipped, saying why. Without x64, as the suite runs."""
    registry = impls.by_name()
    settings = measure.Settings(warmup=0, min_reps=1, max_reps=1, target_s=0.0)
    with jax.enable_x64(False):
        problem = _tiny(name)
        assert all(v < 1e-5 for v in problems.check_agreement(problem).values())
        probes = impls.PROBES_QUICK
        parts = {registry[n].reference for n in names} - {None}
        refs = problems.references(problem, 1, parts, probes)
        rows = {}
        for row_name in names:
            impl = registry[row_name]
            [(label, k)] = impl.row_names(problem, quick=True)
            assert k == (probes if impl.kind == "diagonal" else 1)
            rows[row_name] = measure.run_one(problem, impl, label, k, refs, settings)
    skipped = {"backpack.DiagGGNExact"} if name == "transformer" else set()
    assert {r for r, row in rows.items() if row["status"] == "skipped"} == skipped
    for row_name, row in rows.items():
        if row_name in skipped:
            assert "BackPACK does not support" in row["error"]
            continue
        assert row["status"] == "ok", row
        assert row["max_rel_err"] < 1e-5, row
        assert row["median_s"] > 0
        assert row["per_vector_s"] == row["median_s"] / row["k"]
    if name != "mlp":
        return
    # The exact-diagonal reference (from per-example Jacobians) is the diagonal of the dense
    # GGN, formed from the float64 products with the unit vectors.
    p64 = {n: x.astype(np.float64) for n, x in problem.params.items()}
    d64 = {n: x.astype(np.float64) if x.dtype.kind == "f" else x for n, x in problem.data.items()}
    flat, unravel = ravel_pytree(p64)
    product = problems.ggn_product(problem)
    dense = jax.vmap(lambda e: ravel_pytree(product(p64, d64, unravel(e)))[0])(np.eye(flat.size))
    diagonal = ravel_pytree(refs["ggn_diag"])[0]
    np.testing.assert_allclose(diagonal, np.diag(dense), rtol=1e-10, atol=1e-14)


def test_ggn_rows_skip_what_cannot_run():
    """The full transformer: jaxhvp's exact diagonal (8192 outputs per example) and BackPACK
    skipped;
    the rows' names and the torch libraries' framework."""
    registry = impls.by_name()
    problem = problems.build("transformer", quick=False)
    reason = registry["jaxhvp.ggn_operator.exact_diagonal"].skip_reason(problem)
    assert reason.startswith("8192 outputs per example")
    assert registry["backpack.DiagGGNExact"].skip_reason(problem) is not None
    assert registry["jaxhvp.gnvp"].skip_reason(problem) is None
    assert registry["curvlinops.hutchinson_diag(GGN)"].framework == "torch"
    assert registry["backpack.DiagGGNExact"].framework == "torch"
    mlp = problems.build("mlp", quick=True)
    assert registry["jaxhvp.ggn_operator.exact_diagonal"].skip_reason(mlp) is None
    assert registry["jaxhvp.spectrum.diagonal(ggn, hutchinson)"].row_names(mlp, quick=False) == [
        (f"jaxhvp.spectrum.diagonal(ggn, hutchinson) [probes={impls.PROBES}]", impls.PROBES)
    ]
    assert not registry["jaxhvp.gnvp"].applies(problems.build("rosenbrock10", quick=True))
