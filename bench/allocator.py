"""glibc's malloc settings against the transformer's Hessian-vector product, process by process.

XLA:CPU's temporaries for the transformer problem are larger than glibc's mmap threshold, so
by default they are mapped anew (and page-faulted, zero-filled) on every call and unmapped
after it. glibc reads its tunables from the environment when the process starts, so each
setting of :data:`SETTINGS` runs in a fresh child process started with it:

* ``default``: neither variable (both are removed from the child's environment);
* ``MALLOC_TRIM_THRESHOLD_ only``: 1 GiB; setting it also turns off glibc's dynamic mmap
  threshold (the threshold stays at its 128 KiB start);
* ``MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_``: both 1 GiB, so allocations below
  1 GiB come from the heap and freed memory stays there.

Each child (``python -m bench.allocator --child SETTING``, which calls
``configure_threads(threads)`` before importing JAX and torch) builds the transformer problem
of ``bench/problems.py`` and times the rows of :data:`ROWS` together by
:func:`bench.fair.time_rows` (rounds of blocks, rotating order, same threads), printing its
timings as JSON: median ms per call, the 25th and 75th percentiles over rounds, and the
process's minor page faults per timed call. Each setting runs in ``--repeats`` processes,
the settings interleaved (default, trim, both, default, ...) so that the machine's drift
reaches all of them alike; the report gives, per setting and row, the median over the
processes of their medians and of their faults per call.

Run from the repository root::

    python -m bench allocator [--quick] [--out results] [--threads N] [--docs]

It writes ``allocator.md`` and ``allocator.json`` to ``--out``; ``--docs`` also copies
``allocator.md`` to ``docs/bench/allocator.md``. ``--quick``: the small transformer, 0.05 s
per row and at least 3 rounds, one process per setting. Off Linux with glibc, or when JAX's
backend (or torch's device) is not the CPU, nothing is run: the variables only change how
glibc hands out host memory, and ``allocator.md`` says so in one line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from . import add_output_options, configure_threads
from .gaps import ROOT, _ms, run_meta, timing_summary, write_outputs

# JAX and torch are imported by the functions that use them, after configure_threads.

PROBLEM = "transformer"
ROWS = (
    "jaxhvp.hvp",
    "jax.jit(jvp(grad))",
    "jax.grad",
    "torch.autograd.functional.hvp",
    "torch.autograd.grad",
)
GIB = str(1 << 30)
TRIM, MMAP = "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"
DEFAULT, BOTH = "default", f"{MMAP} and {TRIM}"
# name -> the variables the child is started with (every other MALLOC_* threshold removed)
SETTINGS = {
    DEFAULT: {},
    f"{TRIM} only": {TRIM: GIB},
    BOTH: {MMAP: GIB, TRIM: GIB},
}
VARIABLES = (TRIM, MMAP)
TARGET_S, MIN_ROUNDS, REPEATS = 1.0, 10, 2  # per row and process; --quick: 0.05 s, 3, 1
TARGET_S_QUICK, MIN_ROUNDS_QUICK, REPEATS_QUICK = 0.05, 3, 1
CHILD_TIMEOUT_S = 600


# --- the child processes ---------------------------------------------------------------------


def child_env(setting: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with exactly ``setting``'s malloc variables, and the
    repository on ``PYTHONPATH``."""
    env = dict(os.environ if base is None else base)
    for name in VARIABLES:
        env.pop(name, None)
    env.update(SETTINGS[setting])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def child_command(setting: str, options: argparse.Namespace) -> list[str]:
    """``python -m bench.allocator --child SETTING`` with ``options``' sizes and timing."""
    return [
        sys.executable,
        "-m",
        "bench.allocator",
        "--child",
        setting,
        *(["--quick"] if options.quick else []),
        "--threads",
        str(options.threads),
        "--target-time",
        str(options.target_time),
        "--min-rounds",
        str(options.min_rounds),
    ]


def schedule(repeats: int) -> list[str]:
    """The settings in the order their processes run: interleaved, ``repeats`` times."""
    return [setting for _ in range(repeats) for setting in SETTINGS]


def run_child(setting: str, options: argparse.Namespace) -> dict[str, Any]:
    """One child process of ``setting``; what it printed (:func:`child`)."""
    command = child_command(setting, options)
    proc = subprocess.run(
        command,
        env=child_env(setting),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if proc.returncode != 0:
        msg = f"the {setting!r} process failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        raise RuntimeError(msg)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(options: argparse.Namespace) -> None:
    """In the child: threads first, then the rows timed together; prints JSON."""
    configure_threads(options.threads)  # before JAX and torch are imported
    from . import fair, impls, measure, problems

    measure.set_torch_threads(options.threads)
    registry = impls.by_name()
    case = impls.Case(problems.build(PROBLEM, options.quick))
    calls = {row: registry[row].factory(case) for row in ROWS}
    timings = fair.time_rows(calls, options.target_time, options.min_rounds)
    found = {
        "setting": options.child,
        "env": {name: os.environ.get(name) for name in VARIABLES},
        "pid": os.getpid(),
        "rows": {row: timing_summary(timing) for row, timing in timings.items()},
    }
    print(json.dumps(found))


# --- the runs and their summary --------------------------------------------------------------


def summarize(runs: dict[str, list[dict]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{setting: {row: ...}}``: the median over a setting's processes of their median
    times and of their faults per call, with each process's values."""
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for setting, found in runs.items():
        summary[setting] = {}
        for row in ROWS:
            medians = [run["rows"][row]["median_s"] for run in found]
            faults = [run["rows"][row]["faults_per_call"] for run in found]
            summary[setting][row] = {
                "median_s": statistics.median(medians),
                "faults_per_call": statistics.median(faults),
                "process_medians_s": medians,
                "process_faults_per_call": faults,
            }
    return summary


def why_not_run() -> str | None:
    """Why nothing is measured here (None: it is)."""
    import jax
    import torch

    if not sys.platform.startswith("linux"):
        return f"the platform is {sys.platform}, not Linux"
    libc = platform.libc_ver()[0]
    if libc != "glibc":
        return f"the C library is {libc or 'unknown'}, not glibc"
    if jax.default_backend() != "cpu":
        return f"JAX's backend is {jax.default_backend()}, not cpu"
    if torch.cuda.is_available():
        return "torch's device is cuda, not cpu"
    return None


def run(options: argparse.Namespace) -> dict[str, Any]:
    """Every setting's processes, interleaved (or nothing, see :func:`why_not_run`)."""
    from . import measure

    measure.set_torch_threads(options.threads)
    started = time.perf_counter()
    skipped = why_not_run()
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    if skipped is None:
        order = schedule(options.repeats)
        for i, setting in enumerate(order):
            print(f"[{i + 1}/{len(order)}] {setting}", file=sys.stderr, flush=True)
            runs[setting].append(run_child(setting, options))
    meta = run_meta(options, started)
    meta["config"].update(
        {
            "problem": PROBLEM,
            "rows": list(ROWS),
            "settings": SETTINGS,
            "repeats": options.repeats,
            "target_s": options.target_time,
            "min_rounds": options.min_rounds,
            "not_run": skipped,
        }
    )
    summary = summarize(runs) if skipped is None else {}
    return {"meta": meta, "summary": summary, "runs": runs}


# --- the report ------------------------------------------------------------------------------


def table(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    head = ["row"]
    for setting in SETTINGS:
        head += [f"{setting} ms", f"{setting} faults / call"]
    head.append("both / default")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in ROWS:
        cells = [row]
        for setting in SETTINGS:
            found = summary[setting][row]
            cells += [_ms(found["median_s"]), f"{found['faults_per_call']:.1f}"]
        ratio = summary[BOTH][row]["median_s"] / summary[DEFAULT][row]["median_s"]
        cells.append(f"{ratio:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    meta = result["meta"]
    m, config = meta["machine"], meta["config"]
    title = "# glibc malloc settings: the transformer's products and gradients"
    if config["not_run"]:
        why = f"{config['not_run']} (glibc's variables only affect CPU host memory on Linux)"
        return f"{title}: not run, {why}.\n"
    processes = "process" if config["repeats"] == 1 else "processes"
    lines = [
        title,
        "",
        f"Machine: {m['cpu']} ({m['cores']} CPUs), {m['threads']} threads for both "
        f"frameworks; JAX device {m['jax_devices'][0]}; jax {m['jax']} (jaxlib "
        f"{m['jaxlib']}, backend {m['jax_backend']}), torch {m['torch']} (device "
        f"{m['torch_device']}, {m['torch_threads']} threads), python {m['python']}; "
        f"{m['platform']}; XLA_FLAGS `{m['xla_flags']}`; jaxhvp {m['jaxhvp']} "
        f"({m['jaxhvp_commit']}); {meta['date']}. Total run time {meta['wall_s']:.0f} s"
        f"{' (--quick)' if config['quick'] else ''}.",
        "",
        f"Each setting is a set of glibc malloc environment variables given to a fresh "
        f"process: `default` none; `{TRIM} only` {TRIM}={GIB} (1 GiB), which also turns off "
        f"glibc's dynamic mmap threshold; `{BOTH}` both at 1 GiB, so allocations under 1 GiB "
        f"are served from the heap and freed memory is kept there. Each process builds the "
        f"{'quick ' if config['quick'] else ''}{PROBLEM} problem of `bench/problems.py` and "
        f"times the rows below together by `bench/fair.py`'s protocol (rounds; in each, a "
        f"block of calls per row, its first untimed; rotating order; at least "
        f"{config['min_rounds']} rounds and {config['target_s']:g} s of timed calls per row). "
        f"Every setting ran in {config['repeats']} {processes}, the settings interleaved "
        f"(default, trim only, both, default, ...). ms: the median over a setting's "
        f"processes of each process's median over rounds of its block medians, in ms per "
        f"call. faults / call: the same median of the process's minor page faults per timed "
        f"call of the row. both / default: the ratio of the two ms columns (timed in "
        f"different processes, so it carries the processes' drift).",
        "",
        table(result["summary"]),
        "",
    ]
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench allocator",
        description=__doc__.splitlines()[0],
        epilog="Each setting runs in fresh processes; their rows are timed together "
        "(bench/fair.py).",
    )
    p.add_argument("--quick", action="store_true", help="small sizes, one process per setting")
    add_output_options(p)
    p.add_argument("--docs", action="store_true", help="also copy allocator.md to docs/bench/")
    p.add_argument(
        "--repeats",
        type=int,
        help=f"processes per setting ({REPEATS}; quick {REPEATS_QUICK})",
    )
    p.add_argument(
        "--target-time", type=float, help=f"timed s per row ({TARGET_S}; quick {TARGET_S_QUICK})"
    )
    p.add_argument(
        "--min-rounds", type=int, help=f"fewest rounds ({MIN_ROUNDS}; quick {MIN_ROUNDS_QUICK})"
    )
    p.add_argument("--child", choices=list(SETTINGS), help=argparse.SUPPRESS)
    options = p.parse_args(argv)
    if options.repeats is None:
        options.repeats = REPEATS_QUICK if options.quick else REPEATS
    if options.target_time is None:
        options.target_time = TARGET_S_QUICK if options.quick else TARGET_S
    if options.min_rounds is None:
        options.min_rounds = MIN_ROUNDS_QUICK if options.quick else MIN_ROUNDS
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    if options.child:
        child(options)
        return
    configure_threads(options.threads)  # before JAX and torch are imported
    result = run(options)
    write_outputs("allocator", markdown(result), result, options)


if __name__ == "__main__":
    main()
