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

from bench import fair, impls, interleaved, measure, problems, report, summary
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
PLOTS = ["products.png"] if importlib.util.find_spec("matplotlib") else []


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
    files = ["summary.md", "summary.json", "headline.md", "results.csv", "results.json"]
    for name in [*files, *PLOTS]:
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
    assert not (out / "optimize.md").exists()  # filtered rows: the products section only
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
        tmp_path,
        "--diagnostics",
        "--problems",
        "rosenbrock10",
        "--impls",
        *(f"={name}" for name in impls),
    )
    # --diagnostics: the eager-against-jit table of the rows timed together, and the drift
    assert "| rosenbrock10 | " in (tmp_path / "interleaved.md").read_text()
    assert "| rosenbrock10 | jaxhvp.hvp | " in (tmp_path / "drift.md").read_text()
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


def _timing(*seconds):
    return fair.Timing(rounds=list(seconds), faults=[0.0] * len(seconds))


def test_fair_protocol_rotates_blocks_and_times_all_but_the_first_call():
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    timings = fair.time_rows(calls, target_s=0.0, min_rounds=3, block=3, warmup=1, settle_s=0)
    assert log[:6] == ["a", "a", "b", "b", "c", "c"]  # compile + warm-up, row by row
    rounds = log[6:]
    assert rounds == [*"aaabbbccc", *"bbbcccaaa", *"cccaaabbb"]  # blocks, rotating
    for timing in timings.values():
        assert len(timing.rounds) == 3 and all(t >= 0 for t in timing.rounds)
    with pytest.raises(ValueError, match="block must be at least 2"):
        fair.time_rows(calls, target_s=0.0, min_rounds=1, block=1)


def test_ratios_are_medians_of_per_round_ratios_with_quartiles():
    a, b = _timing(2.0, 4.0, 6.0, 8.0, 100.0), _timing(1.0, 1.0, 2.0, 2.0, 1.0)
    median, low, high = fair.ratio(a, b)
    assert median == 4.0  # per round: 2, 4, 3, 4, 100
    assert (low, high) == (3.0, 4.0)
    assert a.median_s == 6.0


def test_interleaved_tables_read_the_rows_timed_together():
    timings = {
        "jaxhvp.hvp": _timing(3.0, 3.0),
        "jaxhvp.hvp(mode=rev-rev)": _timing(2.0, 2.0),
        "jaxhvp.hvp(mode=rev-fwd)": _timing(4.0, 4.0),
        "jaxhvp.hvp(mode=auto)": _timing(2.2, 2.2),
        "jaxhvp.hvp[top-level f]": _timing(1.5, 1.5),
        "jax.jit(jvp(grad))[top-level f]": _timing(1.0, 1.0),
        "jax.jit(jvp(grad))": _timing(2.5, 2.5),
    }
    modes = interleaved.modes("p", timings)
    assert modes["best_mode"] == "rev-rev" and modes["auto_over_best"] == pytest.approx(1.1)
    overhead = interleaved.overhead("p", timings)
    assert overhead["jaxhvp.hvp / jax.jit(jvp(grad))"] == pytest.approx(1.2)
    text = interleaved.markdown([modes], [overhead]).splitlines()
    assert text[4] == "| p | 1.50x | 1.20x | 2 |"
    assert interleaved.modes("p", {"jaxhvp.hvp": _timing(1.0)}) is None  # not all timed


def test_summary_tables_speedups_and_per_grad_ratios():
    timings = {
        "p": {
            1: {
                "jaxhvp.hvp": fair.Timing([2.0, 2.0, 2.0], faults=[0.0, 900.0, 1200.0]),
                "torch.autograd.functional.hvp": _timing(6.0, 8.0, 10.0),
                "jax.grad": _timing(1.0, 1.0, 1.0),
                "torch.autograd.grad": _timing(2.0, 2.0, 2.0),
            }
        }
    }
    machine = report.machine_info(1)
    data = summary.build(timings, {"p": 12345}, machine)
    (entry,) = data["problems"]
    assert entry["speedup"]["torch.autograd.functional.hvp"] == (4.0, 3.5, 4.5)
    assert entry["per_grad"]["jaxhvp.hvp / jax.grad"][0] == 2.0
    text = summary.markdown(data)
    assert data["device"] in text and machine["jax"] in text
    assert "| p | 12,345 | 2000 | 8000 |" in text  # only the columns that ran
    # jaxhvp's page faults per call: the median over rounds; others' cores not measured
    assert "| p | 4.00x [3.50-4.50] | 3 | 900 | - |" in text
    assert "torch.compile" not in text.split("Time per")[1].split("\n\n")[1]


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


def test_summary_names_the_device():
    cpu = {"cpu": "Some CPU", "threads": 4, "jax_backend": "cpu", "gpu": None}
    assert summary.device(cpu) == "CPU: Some CPU, 4 threads for each framework"
    gpu = {**cpu, "gpu": "NVIDIA H100", "jax_backend": "gpu", "jax_device_kind": "NVIDIA H100"}
    assert summary.device(gpu).startswith("GPU: NVIDIA H100 (torch), NVIDIA H100 (JAX")


def test_embed_replaces_only_the_marked_block(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(f"head\n{summary.START}\nold\n{summary.END}\ntail\n")
    summary.embed("new\ntable\n", page)
    assert page.read_text() == f"head\n{summary.START}\nnew\ntable\n{summary.END}\ntail\n"
    assert summary.embedded(page) == "new\ntable"
    page.write_text("no markers\n")
    with pytest.raises(ValueError, match="needs one"):
        summary.embed("x", page)
