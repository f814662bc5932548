"""``python -m bench``: jaxhvp's Hessian-vector products against hand-written JAX and PyTorch,
and its optimiser and spectrum estimates against scipy and PyHessian, in one run with one
summary (summary.md; headline.md for the README). Diagnostic rows only with --diagnostics."""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import functools
import importlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import DOCS, add_output_options, configure_threads
from . import copy_to_docs as copy_file

EPILOG = """\
Sections (--sections, default all three; only 'products' when --problems or --impls is
given): 'products', the Hessian-vector products of jaxhvp, hand-written JAX and PyTorch on
six problems; 'optimize', jit-compiled jaxhvp.minimize against scipy.optimize.minimize with
JAX and with numpy callbacks (bench/minimize.py); 'spectrum', the top eigenvalue and trace
of the MLP's Hessian with jaxhvp.spectrum and PyHessian, against float64 references
(bench/spectrum.py; PyHessian's rows say so when it is not installed). summary.md holds them
all under one header (device, versions, date), headline.md the header and the time per
product with the speed-ups; optimize.md and spectrum.md are the two sections alone.

Filters take names, shell globs or prefixes ending at '.', '(' or '[' (so 'jax' selects
jax.grad and jax.jit(...) but not jaxhvp.*, and 'jaxhvp.hvp' every jaxhvp.hvp variant), or
'=NAME' for exactly NAME, separated by spaces or commas; --list shows them. The curvlinops
and BackPACK rows (framework torch) go by their own names: 'curvlinops', 'backpack'. The
gradient of each framework used is always timed: it is the per_grad unit.

Diagnostic rows (--list marks them) run only with --diagnostics or when --impls names them:
jaxhvp.hvp's other modes (mode=rev-rev, rev-fwd, auto) and jit=False, and the per-call
overhead rows ([top-level f], [fresh-data], [fresh-closure]). With them the run also writes
interleaved.md (mode=auto against each mode; eager calls against a hand-written jit).

Other suites: 'python -m bench allocator|gaps|inverse|sharding|training [--quick ...]' (each
also runs as 'python -m bench.NAME'): allocator: the transformer's rows under glibc's default
and raised malloc thresholds (page faults per call); gaps: minimal programs where XLA:CPU's
code is slower than torch's; inverse products; the data-parallel operator on N simulated
devices; second-order training against Adam. 'python -m bench.minimize' and
'python -m bench.spectrum' run one section ('--sections optimize', '--sections spectrum').

Every row is first checked against its reference, with its first call (compile) time and,
in the full run, its peak memory in a fresh process (python -m bench._worker). Then each
problem's rows are timed together in this process (bench/fair.py: same data and threads,
blocks of calls by rounds in a rotating order): those are the times reported, and
summary.md holds the comparisons a user reads (jaxhvp against hand-written JAX and each
torch path, with the spread of the per-round ratios). --diagnostics also writes drift.md:
each row timed in its own process beside the same row timed with the others.

Files in --out: summary.md, summary.json, headline.md, optimize.md, spectrum.md (the
sections that ran); results.csv, results.json and table.md (every product row: first call,
peak memory, error); products.png, batched.png, ggn.png (grouped bars per family of rows,
log scale); interleaved.md and drift.md with --diagnostics. --docs copies the markdown
files and the figures to docs/bench/ and puts headline.md into README.md between its
markers.

--quick: smaller CNN and transformer, fewer repetitions, no torch.compile, 8 probes (not
16) in the Hutchinson diagonal rows, everything in this process (peak memory NaN), shorter
waits for a quiet machine, and small optimize and spectrum problems (n = 100 Rosenbrock; a
64-32-32-10 MLP). The batched rows run at k = 1 and 8.

The generalized Gauss-Newton rows (MLP and transformer) compare jaxhvp.gnvp, ggn_operator
and spectrum.diagonal with curvlinops (GGNLinearOperator, hutchinson_diag), BackPACK
(DiagGGNExact) and hand-written JAX and torch.func products; per_grad is per product, per
probe, or per exact diagonal. A row that cannot run on a problem is listed as skipped, with
the reason.
"""

SECTIONS = ("products", "optimize", "spectrum")
OTHER_SECTIONS = (  # (section, module with run(quick), what it compares)
    ("optimize", "minimize", "jaxhvp.minimize against scipy.optimize.minimize"),
    ("spectrum", "spectrum", "jaxhvp.spectrum against PyHessian on the MLP"),
)
TARGET_S = 0.5  # timed seconds per row in the fair pass, 10 rounds at least (quick: 0.1, 3)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the reduced suite (a few minutes on 2 cores)",
    )
    p.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        metavar="S",
        help="what to run: products, optimize, spectrum (default: all three; products only "
        "when --problems or --impls is given)",
    )
    p.add_argument("--problems", nargs="+", metavar="P", help="problems to run (default all)")
    p.add_argument(
        "--impls",
        nargs="+",
        metavar="I",
        help="implementations (default: all but the diagnostic rows; a filter may name those)",
    )
    add_output_options(p)
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a fresh process per row, with peak memory (default: on unless --quick)",
    )
    p.add_argument(
        "--target-time",
        type=float,
        help=f"timed seconds per row in the fair pass ({TARGET_S}; quick 0.1)",
    )
    p.add_argument("--min-reps", type=int, help="fewest timed calls per row (5; quick 3)")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds before a fresh-process row is killed (300)",
    )
    p.add_argument(
        "--max-wait",
        type=float,
        help="seconds to wait for a quiet machine before each row (30; quick 5; "
        "at most 600 in all, quick 20; 0 turns the wait off)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a row is wrong or fails (torch.compile rows excepted)",
    )
    p.add_argument(
        "--diagnostics",
        action="store_true",
        help="also run the diagnostic rows (mode=, jit=False, [top-level f], [fresh-data], "
        "[fresh-closure]) and write interleaved.md, and drift.md: each row timed in its own "
        "process against the same row timed with the others, with page faults per call "
        "(own processes with --memory)",
    )
    p.add_argument(
        "--docs",
        action="store_true",
        help="also copy summary.md, headline.md, optimize.md, spectrum.md, the figures (and "
        "drift.md) to docs/bench/, where the docs include them, and put headline.md into "
        "README.md between its markers",
    )
    p.add_argument("--list", action="store_true", help="list problems and implementations")
    return p.parse_args(argv)


def selected(names: list[str], patterns: list[str] | None) -> list[str]:
    if not patterns:
        return names
    tokens = [t for pattern in patterns for t in pattern.split(",") if t]
    return [n for n in names if any(_matches(n, t) for t in tokens)]


def _matches(name: str, token: str) -> bool:
    if token.startswith("="):
        return name == token[1:]
    if name == token or fnmatch.fnmatchcase(name, token):
        return True
    return name.startswith(token) and (len(name) == len(token) or name[len(token)] in ".([ ")


class _Progress:
    """A tqdm bar on a terminal (when tqdm is installed), else one line per row on stderr."""

    def __init__(self, total: int) -> None:
        self.bar, self.total, self.n = None, total, 0
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self.bar = tqdm(total=total, unit="row", dynamic_ncols=True)

    def show(self, label: str) -> None:
        """``label`` is what runs now."""
        if self.bar is None:
            print(f"[{self.n}/{self.total} done] {label}", file=sys.stderr, flush=True)
        else:
            self.bar.set_postfix_str(label[:70])

    def done(self) -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ``python -m bench NAME [options]`` runs the other benchmarks (``python -m bench.NAME``).
SUITES = ("allocator", "gaps", "inverse", "sharding", "training")


def main(argv: list[str] | None = None) -> int:
    given = sys.argv[1:] if argv is None else list(argv)
    if given and given[0] in SUITES:
        importlib.import_module(f"bench.{given[0]}").main(given[1:])
        return 0
    args = parse_args(argv)
    configure_threads(args.threads)  # before JAX and torch are imported

    from . import impls, measure, problems, report, summary

    measure.set_torch_threads(args.threads)
    registry = impls.by_name()
    if args.list:
        print("problems:", *problems.BUILDERS, sep="\n  ")
        print(
            "implementations (*: diagnostic, run with --diagnostics or when named):",
            *(f"{n}{' *' * impl.diagnostic}" for n, impl in registry.items()),
            sep="\n  ",
        )
        return 0
    sections = args.sections or (["products"] if args.problems or args.impls else list(SECTIONS))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    products = None
    if "products" in sections:
        products = run_products(args, registry, argv)
        if products is None:
            print("nothing selected: see --list", file=sys.stderr)
            return 2
    elapsed = {"products": time.perf_counter() - started} if products else {}
    extra: dict[str, Any] = {}
    for section, module, what in OTHER_SECTIONS:
        if section in sections:
            print(f"{section}: {what}", file=sys.stderr)
            start = time.perf_counter()
            extra[section] = importlib.import_module(f".{module}", __package__).run(args.quick)
            elapsed[section] = time.perf_counter() - start
    machine = products["meta"]["machine"] if products else report.machine_info(args.threads)
    data = summary.build(
        products["timings"] if products else {},
        products["sizes"] if products else {},
        machine,
        quick=args.quick,
        sections=extra,
    )
    data["elapsed_s"] = elapsed  # wall seconds per section, in summary.json only
    written = summary.write(data, out)
    files = [p.name for p in written]
    if products:
        files += write_products(products, out, args.diagnostics)
    print("\n" + (out / "summary.md").read_text())
    if args.docs:
        copy_to_docs(out, files)
    took = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in elapsed.items())
    print(f"\n{took}; {args.threads} threads; results in {out}/ ({', '.join(files)})")
    if products is None:
        return 0
    rows = products["rows"]
    if not any(name.endswith(".png") for name in files):
        print("no plots: matplotlib is not installed (pip install -e '.[bench]')")
    failed = [
        r
        for r in rows
        if r["status"] == "wrong"
        or (r["status"] not in ("ok", "skipped") and not registry[r["base_impl"]].isolate)
    ]
    return 1 if args.check and failed else 0


# What --docs copies to docs/bench/ (when the run wrote it); README.md embeds headline.md.
DOCS_FILES = (
    "summary.md",
    "headline.md",
    "optimize.md",
    "spectrum.md",
    "products.png",
    "batched.png",
    "ggn.png",
    "drift.md",
)


def copy_to_docs(out: Path, files: list[str], docs: Path = DOCS) -> list[str]:
    """Copies the files of :data:`DOCS_FILES` that this run wrote to ``docs``, and
    headline.md into the README between its markers; returns the names copied."""
    from . import summary

    copied = [name for name in DOCS_FILES if name in files]
    for name in copied:
        copy_file(out / name, docs)
    if "headline.md" in copied:
        summary.embed((out / "headline.md").read_text(), docs.parent.parent / "README.md")
    return copied


def chosen_impls(args: argparse.Namespace, registry: dict[str, Any]) -> list[Any]:
    """The rows to run: the ``--impls`` filter (default: every row but the diagnostic ones,
    unless ``--diagnostics``), without torch.compile under ``--quick``, and the gradient of
    each framework selected."""
    from . import impls

    impl_names = selected(list(registry), args.impls)
    return [
        impl
        for impl in registry.values()
        if (
            impl.name in impl_names
            and (impl.quick or not args.quick)
            and (args.impls or args.diagnostics or not impl.diagnostic)
        )
        or (
            impl.kind == "grad"
            and any(impls.UNITS[registry[n].framework] == impl.name for n in impl_names)
        )
    ]


def run_products(
    args: argparse.Namespace, registry: dict[str, Any], argv: list[str] | None
) -> dict[str, Any] | None:
    """The products section: every selected row checked (first call, peak memory), then each
    problem's rows timed together; None when nothing is selected."""
    from . import fair, interleaved, measure, problems, report

    memory = not args.quick if args.memory is None else args.memory
    settings = measure.Settings(
        min_reps=args.min_reps or (3 if args.quick else 5),
        max_reps=50 if args.quick else 200,
        target_s=args.target_time or (0.1 if args.quick else TARGET_S),
        timeout_s=args.timeout,
        threads=args.threads,
    )
    # The first pass checks each row, with its first call and memory; the timing that counts
    # is the fair pass's. Only --diagnostics times the first pass as fully, to compare.
    checking = settings if args.diagnostics else dataclasses.replace(settings, target_s=0.0)
    problem_names = selected(list(problems.BUILDERS), args.problems)
    chosen = chosen_impls(args, registry)
    if not problem_names or not chosen:
        return None

    started = time.perf_counter()
    built = {name: problems.build(name, args.quick) for name in problem_names}
    tasks = [
        (built[p], impl, row, k)
        for p in problem_names
        for impl in chosen
        for row, k in impl.row_names(built[p], args.quick)
    ]
    rows: list[dict[str, Any]] = []
    checks: dict[str, dict[str, Any]] = {}
    guard = measure.QuietGuard(
        max_wait_s=args.max_wait if args.max_wait is not None else (5.0 if args.quick else 30.0),
        budget_s=20.0 if args.quick else 600.0,
        retries=0 if args.quick else 2,
    )
    progress = _Progress(len(tasks))
    with tempfile.TemporaryDirectory() as tmp:
        for name, problem in built.items():
            mine = [t for t in tasks if t[0] is problem]
            if not mine:
                continue
            progress.show(f"{name}: agreement check and references")
            checks[name] = _describe(problem, problems.check_agreement(problem))
            runs = [t for t in mine if t[1].skip_reason(problem) is None]
            k_max = max((k for _, impl, _, k in runs if impl.reference is None), default=1)
            parts = {impl.reference for _, impl, *_ in runs if impl.reference is not None}
            probes = max((k for _, impl, _, k in runs if impl.kind == "diagonal"), default=0)
            refs = problems.references(problem, k_max, parts, probes)
            refs_path = Path(tmp) / f"{name}.npz"
            measure.save_refs(refs, refs_path)
            for _, impl, row_name, k in mine:
                progress.show(f"{name} {row_name}")
                if impl.skip_reason(problem) is not None:
                    rows.append(measure.skipped_row(problem, impl, row_name, k))
                    progress.done()
                    continue
                if memory or impl.isolate:
                    measure_row = functools.partial(
                        measure.run_isolated,
                        problem,
                        impl,
                        row_name,
                        k,
                        refs_path,
                        checking,
                        args.quick,
                    )
                else:
                    measure_row = functools.partial(
                        measure.run_one, problem, impl, row_name, k, refs, checking
                    )
                rows.append(guard.run(measure_row))
                progress.done()
    mode_rows, overhead_rows, timings = [], [], {}
    rounds = 3 if args.quick else 10
    for name, problem in built.items():
        progress.show(f"{name}: the rows timed together, in blocks by rounds")
        mine = [r for r in rows if r["problem"] == name]
        timings[name] = fair.time_problem(problem, mine, settings.target_s, rounds)
        for table, read in ((mode_rows, interleaved.modes), (overhead_rows, interleaved.overhead)):
            entry = read(name, timings[name].get(1, {}))
            if entry is not None:
                table.append(entry)
    progress.close()

    report.add_per_grad(rows)
    meta = {
        "machine": report.machine_info(args.threads),
        "config": {
            "quick": args.quick,
            "memory": memory,
            "argv": sys.argv[1:] if argv is None else argv,
            "tolerance": measure.TOLERANCE,
            "dtype": "float32",
            "memory_method": measure.PeakMemory.method() if memory else "not measured (NaN)",
            **dataclasses.asdict(settings),
        },
        "problems": checks,
        "elapsed_s": time.perf_counter() - started,
        "quiet_guard": {
            "enabled": guard.enabled,
            "waited_s": guard.waited_s,
            "threshold_cores": guard.threshold,
            "retries": guard.retries,
            "max_wait_s": guard.max_wait_s,
            "budget_s": guard.budget_s,
        },
    }
    return {
        "rows": rows,
        "timings": timings,
        "sizes": {name: problem.size for name, problem in built.items()},
        "meta": meta,
        "mode_rows": mode_rows,
        "overhead_rows": overhead_rows,
    }


def write_products(products: dict[str, Any], out: Path, diagnostics: bool) -> list[str]:
    """The products' files (results.csv, results.json, table.md, the figures, and the
    diagnostic tables), the printed tables; returns the names written."""
    from . import interleaved, report, summary

    rows, meta = products["rows"], products["meta"]
    report.write_csv(rows, out / "results.csv")
    report.write_json(rows, meta, out / "results.json")
    (out / "table.md").write_text(report.markdown_table(rows) + "\n")
    files = ["results.csv", "results.json", "table.md"]
    files += [p.name for p in report.plot(rows, out, summary.COLUMNS)]
    print()
    print(report.text_table(rows))
    overheads = report.overhead_summary(rows)
    if overheads:
        print("\n" + overheads)
    if products["mode_rows"] or products["overhead_rows"]:
        text = interleaved.markdown(products["mode_rows"], products["overhead_rows"])
        (out / "interleaved.md").write_text(text + "\n")
        files.append("interleaved.md")
        print("\n" + text)
    if diagnostics:
        text = report.drift_table(rows)
        (out / "drift.md").write_text(text + "\n")
        files.append("drift.md")
        print("\n" + text)
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        print(
            "\nSkipped:\n"
            + "\n".join(f"  {r['problem']} {r['impl']}: {r['error']}" for r in skipped)
        )
    statuses = ("ok", "wrong", "error", "timeout", "skipped")
    counts = {s: sum(r["status"] == s for r in rows) for s in statuses}
    print(
        f"\n{len(rows)} rows ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}) in "
        f"{meta['elapsed_s']:.0f} s"
    )
    return files


def _describe(problem: Any, agreement: dict[str, float]) -> dict[str, Any]:
    worst = max(agreement.values())
    if not worst <= 1e-3 or math.isnan(worst):
        msg = f"{problem.name}: the JAX and torch definitions disagree: {agreement}"
        raise AssertionError(msg)
    return {"description": problem.description, "parameters": problem.size, **agreement}


if __name__ == "__main__":
    sys.exit(main())
