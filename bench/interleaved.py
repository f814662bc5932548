"""Ratios that need a steady baseline: rows timed interleaved in one process.

The suite times each row in its own process, which is right for memory and cold starts but
lets a row drift by 10-20% from one process to the next: too much to judge a ratio near 1
(``mode="auto"`` against the modes it chooses between; an eager call against a hand-written
jit on a tiny problem). Here the rows of one comparison run on the same arrays in the same
process, one call of each per round in a rotating order, and their medians are compared.
The rows are the suite's own (``impls``), so they compute exactly what the table times.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax

from . import impls, problems

MODES = ("fwd-rev", "rev-rev", "rev-fwd")
MODE_ROWS = {
    "fwd-rev": "jaxhvp.hvp",
    "rev-rev": "jaxhvp.hvp(mode=rev-rev)",
    "rev-fwd": "jaxhvp.hvp(mode=rev-fwd)",
    "auto": "jaxhvp.hvp(mode=auto)",
}
# (row, the hand-written jit it is measured against)
OVERHEAD_PAIRS = (
    ("jaxhvp.hvp[top-level f]", "jax.jit(jvp(grad))[top-level f]"),
    ("jaxhvp.hvp", "jax.jit(jvp(grad))"),
)


def medians(problem: problems.Problem, names: list[str], target_s: float, min_rounds: int):
    """``({row: median seconds per call}, rounds)``, the rows timed interleaved."""
    registry, case = impls.by_name(), impls.Case(problem)
    calls = {name: registry[name].factory(case) for name in names}
    for call in calls.values():  # compile (auto: measure and choose), then warm up
        jax.block_until_ready(call())
        jax.block_until_ready(call())
    samples: dict[str, list[float]] = {name: [] for name in names}
    started, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - started < target_s:
        for name in names[rounds % len(names) :] + names[: rounds % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(calls[name]())
            samples[name].append(time.perf_counter() - start)
        rounds += 1
    return {name: statistics.median(s) for name, s in samples.items()}, rounds


def modes(problem: problems.Problem, target_s: float, min_rounds: int) -> dict[str, Any]:
    """Each mode of ``jaxhvp.hvp`` and ``"auto"``: medians and auto over the best mode."""
    times, rounds = medians(problem, list(MODE_ROWS.values()), target_s, min_rounds)
    by_mode = {mode: times[row] for mode, row in MODE_ROWS.items()}
    best = min(MODES, key=by_mode.get)
    return {
        "problem": problem.name,
        **{f"{mode}_s": t for mode, t in by_mode.items()},
        "best_mode": best,
        "auto_over_best": by_mode["auto"] / by_mode[best],
        "rounds": rounds,
    }


def overhead(problem: problems.Problem, target_s: float, min_rounds: int) -> dict[str, Any]:
    """Eager ``jaxhvp.hvp`` over the hand-written jit, for a top-level ``f`` and for the
    suite's function (a closure over the loss and the data)."""
    names = [name for pair in OVERHEAD_PAIRS for name in pair]
    times, rounds = medians(problem, names, target_s, min_rounds)
    row = {"problem": problem.name, **{f"{name}_s": times[name] for name in names}}
    for name, base in OVERHEAD_PAIRS:
        row[f"{name} / {base}"] = times[name] / times[base]
    return {**row, "rounds": rounds}


def markdown(mode_rows: list[dict[str, Any]], overhead_rows: list[dict[str, Any]]) -> str:
    parts = []
    if overhead_rows:
        head = ["problem", *(f"{n} / {b}" for n, b in OVERHEAD_PAIRS), "rounds"]
        lines = ["Eager calls against a hand-written jit (medians per call):", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in overhead_rows:
            ratios = [f"{r[f'{n} / {b}']:.2f}x" for n, b in OVERHEAD_PAIRS]
            lines.append("| " + " | ".join([r["problem"], *ratios, str(r["rounds"])]) + " |")
        parts.append("\n".join(lines))
    if mode_rows:
        head = ["problem", *(f"{m} ms" for m in MODE_ROWS), "best mode", "auto / best", "rounds"]
        lines = ['`mode="auto"` against each mode (medians per call):', ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mode_rows:
            times = [f"{r[f'{mode}_s'] * 1e3:.4g}" for mode in MODE_ROWS]
            cells = [r["problem"], *times, r["best_mode"], f"{r['auto_over_best']:.3f}"]
            lines.append("| " + " | ".join([*cells, str(r["rounds"])]) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
