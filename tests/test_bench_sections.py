"""``python -m bench``'s sections and files: the default rows (no diagnostic rows), the
optimiser and spectrum sections in the same summary, headline.md, the figures, --docs.

One quick run of all three sections (one problem, two rows) in a subprocess, as a user runs
it; the rest in this process. No timing is asserted.
"""

import json
import math

import pytest
from bench_runs import ROOT, run_module

from bench import fair, impls, minimize, report, spectrum, summary
from bench.__main__ import DOCS_FILES, chosen_impls, copy_to_docs, parse_args

DIAGNOSTIC = {
    "jaxhvp.hvp(mode=rev-rev)",
    "jaxhvp.hvp(mode=rev-fwd)",
    "jaxhvp.hvp(mode=auto)",
    "jaxhvp.hvp(jit=False)",
    "jaxhvp.hvp[top-level f]",
    "jax.jit(jvp(grad))[top-level f]",
    "jaxhvp.hvp[fresh-closure]",
    "jaxhvp.hvp[fresh-data]",
    "jax.jit(jvp(grad))[fresh-data]",
    "torch.autograd.functional.hvp[fresh-closure]",
}
SECTION_HEADINGS = [heading for _, heading, _ in summary.SECTIONS]


def _chosen(*argv: str) -> set[str]:
    return {impl.name for impl in chosen_impls(parse_args(list(argv)), impls.by_name())}


def test_default_rows_leave_the_diagnostic_rows_out():
    registry = impls.by_name()
    assert {n for n, impl in registry.items() if impl.diagnostic} == DIAGNOSTIC
    default = _chosen()
    assert not default & DIAGNOSTIC
    # what the summary reads, and the user-facing rows, stay
    assert {row for _, row in summary.COLUMNS} <= default
    assert {unit for pair in summary.PER_GRAD for unit in pair} <= default
    assert {"jaxhvp.vhp", "jaxhvp.hessian_operator[apply]", "jaxhvp.hvp[vmap]"} <= default
    assert {impl.name for impl in impls.ggn_rows()} <= default
    assert _chosen("--diagnostics") == set(registry)
    assert DIAGNOSTIC & _chosen("--quick", "--diagnostics") == DIAGNOSTIC
    # a filter may name a diagnostic row; the gradient unit comes with it
    assert _chosen("--impls", "=jaxhvp.hvp(mode=auto)") == {"jaxhvp.hvp(mode=auto)", "jax.grad"}


def test_sections_default_to_all_three_unless_rows_are_filtered():
    assert parse_args([]).sections is None  # main: all three
    assert parse_args(["--sections", "optimize", "spectrum"]).sections == ["optimize", "spectrum"]
    with pytest.raises(SystemExit):
        parse_args(["--sections", "gaps"])


def test_time_rounds_rotates_one_call_per_row_per_round():
    log = []
    calls = {name: (lambda name=name: log.append(name)) for name in "abc"}
    timings = fair.time_rounds(calls, target_s=0.0, min_rounds=3, pause_s=0.0)
    assert log == [*"abc", *"bca", *"cab"]
    assert all(len(t.rounds) == 3 for t in timings.values())
    assert fair.ratio(timings["a"], timings["a"])[0] == 1.0


def _row(problem, impl, kind="hvp", k=1, framework="jaxhvp", seconds=1e-3, status="ok"):
    return {
        "problem": problem,
        "impl": impl if k == 1 or kind != "batched" else f"{impl} [k={k}]",
        "base_impl": impl,
        "framework": framework,
        "kind": kind,
        "k": k,
        "status": status,
        "median_s": seconds * k,
        "p20_s": 0.9 * seconds * k,
        "p80_s": 1.2 * seconds * k,
    }


def test_plots_one_figure_of_grouped_bars_per_family(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    rows = [
        _row(p, row, framework=impls.Impl(row, None).framework, seconds=1e-3 * (i + 1))
        for p in ("rosenbrock10", "mlp")
        for i, (_, row) in enumerate(summary.COLUMNS)
    ]
    rows += [_row("mlp", "jaxhvp.hvp[vmap]", "batched", k) for k in (1, 8)]
    rows += [_row("mlp", "torch.func.vmap(jvp(grad))", "batched", k, "torch") for k in (1, 8)]
    rows += [
        _row("mlp", "jaxhvp.gnvp", "ggn"),
        _row("mlp", "curvlinops.GGNLinearOperator[apply]", "ggn", framework="torch"),
        _row("mlp", "backpack.DiagGGNExact", "exact_diagonal", framework="torch"),
        _row("mlp", "jaxhvp.hvp", "hvp", status="wrong"),  # not drawn
    ]
    paths = report.plot(rows, tmp_path, summary.COLUMNS)
    assert [p.name for p in paths] == ["products.png", "batched.png", "ggn.png"]
    width, height = (round(x * report.DPI) for x in report.FIGSIZE)
    for path in paths:
        assert matplotlib.image.imread(path).shape[:2] == (height, width), path.name
    # no k-vector or GGN rows: one figure
    assert [p.name for p in report.plot(rows[:7], tmp_path, summary.COLUMNS)] == ["products.png"]


def test_colours_follow_the_framework_in_order():
    colours = report.colors([("a", "jaxhvp"), ("b", "torch"), ("c", "torch"), ("d", "jax")])
    assert colours == {
        "a": report.PALETTES["jaxhvp"][0],
        "b": report.PALETTES["torch"][0],
        "c": report.PALETTES["torch"][1],
        "d": report.PALETTES["jax"][0],
    }


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """All three sections, quick, on one problem and two rows (and their units)."""
    out = tmp_path_factory.mktemp("sections")
    run_module(
        "bench",
        "--quick",
        "--check",
        "--max-wait",
        "0",
        "--sections",
        "products",
        "optimize",
        "spectrum",
        "--problems",
        "rosenbrock10",
        "--impls",
        "=jaxhvp.hvp",
        "=torch.autograd.functional.hvp",
        "--out",
        str(out),
        timeout=600,
    )
    return out


def test_summary_holds_every_section_under_one_header(quick_run):
    out = quick_run
    text = (out / "summary.md").read_text()
    first = text.splitlines()[0]
    assert first.startswith("Device: ") and "A `--quick` run" in first
    headings = [line for line in text.splitlines() if line.startswith("### ")]
    assert headings == ["### Hessian-vector products", *(f"### {h}" for h in SECTION_HEADINGS)]
    data = json.loads((out / "summary.json").read_text())
    assert set(data["sections"]) == {"optimize", "spectrum"} and data["quick"]
    for name in ("optimize.md", "spectrum.md", "headline.md"):
        assert (out / name).read_text().splitlines()[0] == first, name
    for name, heading in zip(("optimize.md", "spectrum.md"), SECTION_HEADINGS):
        body = (out / name).read_text().split("\n\n", 1)[1].strip()  # after the header
        assert f"### {heading}\n\n{body}" in text, name


def test_optimize_section_times_every_solve(quick_run):
    data = json.loads((quick_run / "summary.json").read_text())["sections"]["optimize"]
    rows = data["rows"]
    assert len(rows) == 3 * len(minimize.METHODS) * len(minimize.IMPLS)
    for r in rows:
        assert r["rounds"] >= minimize.QUICK_MIN_ROUNDS
        assert 0 < r["p25_s"] <= r["median_s"] <= r["p75_s"]
        assert (r["over_jaxhvp"] is None) == (r["impl"] == "jaxhvp")
        assert (r["compile_s"] is not None) == (r["impl"] == "jaxhvp")
        assert math.isfinite(r["fun"])
        if r["problem"].startswith("extended Rosenbrock"):  # decoupled pairs: converges
            assert r["fun"] < 1e-6, r
    text = (quick_run / "optimize.md").read_text()
    assert "| chained Rosenbrock n=100 | newton-cg | jaxhvp |" in text


def test_spectrum_section_checks_against_float64_references(quick_run):
    data = json.loads((quick_run / "summary.json").read_text())["sections"]["spectrum"]
    rows = {r["impl"]: r for r in data["rows"]}
    assert set(spectrum.PYHESSIAN.values()) <= set(rows)  # present, run or not
    for r in rows.values():
        if r.get("missing"):
            assert data["pyhessian"] is None
            continue
        assert r["rounds"] == spectrum.QUICK_ROUNDS and math.isfinite(r["median_s"])
        if r["kind"] == "top_eigenvalue" and r["framework"] == "jax":
            assert r["rel_err"] < 1e-4
    text = (quick_run / "spectrum.md").read_text()
    assert "Reference top eigenvalue" in text
    if data["pyhessian"] is None:
        assert "not run: PyHessian is not installed" in text


def test_headline_is_the_header_and_one_table(quick_run):
    lines = (quick_run / "headline.md").read_text().strip().splitlines()
    assert len(lines) <= 25
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| problem | parameters | jaxhvp | torch hvp |"
    assert table[2].startswith("| rosenbrock10 | 10 | ") and table[2].endswith("x) |")


def test_docs_copies_what_the_run_wrote_and_embeds_the_headline(quick_run, tmp_path):
    docs = tmp_path / "docs" / "bench"
    docs.mkdir(parents=True)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{summary.START}\nold\n{summary.END}\nrest\n")
    files = [p.name for p in quick_run.iterdir()]
    copied = copy_to_docs(quick_run, files, docs)
    assert set(copied) == {"summary.md", "headline.md", "optimize.md", "spectrum.md"} | (
        {"products.png"} if "products.png" in files else set()
    )
    assert set(copied) <= set(DOCS_FILES)
    assert summary.embedded(readme) == (quick_run / "headline.md").read_text().strip()
    assert readme.read_text().endswith(f"{summary.END}\nrest\n")


def test_the_readme_embeds_the_generated_headline_unchanged():
    """``python -m bench --docs`` writes both; a hand edit of either fails here."""
    generated = (ROOT / "docs" / "bench" / "headline.md").read_text().strip()
    assert summary.embedded(ROOT / "README.md") == generated
    assert generated.startswith("Device: ")
    assert len(generated.splitlines()) <= 25


def test_the_docs_include_only_generated_files_that_exist():
    """Every ``--8<--`` include and figure of the benchmark page exists in docs/bench."""
    page = (ROOT / "docs" / "benchmark.md").read_text()
    includes = [line.split('"')[1] for line in page.splitlines() if line.startswith("--8<--")]
    assert "docs/bench/summary.md" in includes
    for path in includes:
        assert (ROOT / path).exists(), path
    for name in ("products.png", "batched.png", "ggn.png"):
        assert f"(bench/{name})" in page
        assert (ROOT / "docs" / "bench" / name).exists()


def test_no_stale_generated_files_in_docs_bench():
    stale = {"table.md", "interleaved.md", "time_per_hvp.png", "hvp_grad_ratio.png"}
    assert not stale & {p.name for p in (ROOT / "docs" / "bench").iterdir()}
