"""Two comparisons near a ratio of 1, read from the rows :mod:`bench.fair` timed together:
``mode="auto"`` against the modes it chooses between, and an eager call against a
hand-written jit (for a top-level ``f`` and for the suite's closure)."""

from __future__ import annotations

from typing import Any

from . import fair

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


def modes(problem: str, timings: dict[str, fair.Timing]) -> dict[str, Any] | None:
    """Each mode of ``jaxhvp.hvp`` and ``"auto"``, from rows timed together: medians and
    auto over the best mode (None when a mode's row was not timed)."""
    if not all(row in timings for row in MODE_ROWS.values()):
        return None
    by_mode = {mode: timings[row].median_s for mode, row in MODE_ROWS.items()}
    best = min(MODES, key=by_mode.get)
    return {
        "problem": problem,
        **{f"{mode}_s": t for mode, t in by_mode.items()},
        "best_mode": best,
        "auto_over_best": fair.ratio(timings[MODE_ROWS["auto"]], timings[MODE_ROWS[best]])[0],
        "rounds": len(timings[MODE_ROWS["auto"]].rounds),
    }


def overhead(problem: str, timings: dict[str, fair.Timing]) -> dict[str, Any] | None:
    """Eager ``jaxhvp.hvp`` over the hand-written jit, for a top-level ``f`` and for the
    suite's function (a closure over the loss and the data), from rows timed together."""
    names = [name for pair in OVERHEAD_PAIRS for name in pair]
    if not all(name in timings for name in names):
        return None
    row: dict[str, Any] = {"problem": problem}
    row.update({f"{name}_s": timings[name].median_s for name in names})
    for name, base in OVERHEAD_PAIRS:
        row[f"{name} / {base}"] = fair.ratio(timings[name], timings[base])[0]
    return {**row, "rounds": len(timings[names[0]].rounds)}


def markdown(mode_rows: list[dict[str, Any]], overhead_rows: list[dict[str, Any]]) -> str:
    parts = []
    if overhead_rows:
        head = ["problem", *(f"{n} / {b}" for n, b in OVERHEAD_PAIRS), "rounds"]
        lines = ["Eager calls against a hand-written jit (medians of per-round ratios):", ""]
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
