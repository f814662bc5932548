"""Results: ``per_grad``, ``results.csv``, ``results.json``, the printed table and the plots."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from . import interleaved
from .impls import UNITS

COLUMNS = [
    "problem",
    "impl",
    "framework",
    "kind",
    "k",
    "status",
    "median_s",
    "p20_s",
    "p80_s",
    "per_vector_s",
    "per_grad",
    "compile_s",
    "peak_mem_mb",
    "first_call_mem_mb",
    "max_rel_err",
    "reps",
    "noisy",
    "others_cores",
    "faults_per_call",
    "isolated_median_s",
    "isolated_faults_per_call",
    "timing",
    "attempts",
    "wall_s",
    "error",
]
COLORS = {"jaxhvp": "tab:green", "jax": "tab:blue", "torch": "tab:orange"}


def add_per_grad(rows: list[dict]) -> None:
    """``per_grad``: time per vector over the median of the same framework's gradient."""
    units = {(r["problem"], r["impl"]): r["median_s"] for r in rows if r["kind"] == "grad"}
    for r in rows:
        unit = units.get((r["problem"], UNITS[r["framework"]]), math.nan)
        r["per_grad"] = r["per_vector_s"] / unit if unit and r["status"] == "ok" else math.nan


def machine_info(threads: int) -> dict[str, Any]:
    import jax
    import numpy
    import torch

    import jaxhvp

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": threads,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "jax_device_kind": jax.devices()[0].device_kind,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": "cuda" if torch.cuda.is_available() else "cpu",
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "numpy": numpy.__version__,
        "jaxhvp": jaxhvp.__version__,
        "jaxhvp_commit": _git_commit(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git_commit() -> str | None:
    """The repository's commit, with ``+dirty`` when jaxhvp/ has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, cwd=root, check=True
        ).stdout.strip()

    try:
        commit, dirty = git("rev-parse", "--short", "HEAD"), git("status", "--porcelain", "jaxhvp")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}+dirty" if dirty else commit or None


# --- files -----------------------------------------------------------------------------------


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(rows: list[dict], meta: dict[str, Any], path: Path) -> None:
    clean = [{key: _finite(value) for key, value in r.items()} for r in rows]
    path.write_text(json.dumps({**meta, "rows": clean}, indent=1, default=str))


# --- the table -------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _num(value: float, fmt: str) -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, fmt)


TABLE_HEAD = [
    "problem",
    "impl",
    "median ms",
    "p20 ms",
    "p80 ms",
    "per vec ms",
    "per_grad",
    "compile s",
    "peak MB",
    "rel err",
    "status",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["problem"],
            r["impl"],
            _ms(r["median_s"]),
            _ms(r["p20_s"]),
            _ms(r["p80_s"]),
            _ms(r["per_vector_s"]) if r["k"] > 1 else "",
            _num(r["per_grad"], ".2f"),
            _num(r["compile_s"], ".3f"),
            _num(r["peak_mem_mb"], ".1f"),
            _num(r["max_rel_err"], ".1e"),
            _status(r),
        ]
        for r in rows
    ]


def _status(r: dict) -> str:
    text = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error'][:60]}"
    return text + " (noisy)" if r.get("noisy") else text


def text_table(rows: list[dict]) -> str:
    body = table_rows(rows)
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(TABLE_HEAD)]
    right = set(range(2, len(TABLE_HEAD) - 1))

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out, previous = [line(TABLE_HEAD), line(["-" * w for w in widths])], None
    for b in body:
        if previous is not None and b[0] != previous:
            out.append("")
        out.append(line(b))
        previous = b[0]
    return "\n".join(out)


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in b) + " |" for b in table_rows(rows)]
    return "\n".join(lines)


def overhead_summary(rows: list[dict]) -> str:
    """Eager jaxhvp against hand-written jits (and torch), per overhead problem."""
    times = {(r["problem"], r["impl"]): r["median_s"] for r in rows if r["status"] == "ok"}
    comparisons = [  # (row, the baseline it is measured against)
        *interleaved.OVERHEAD_PAIRS,
        ("jaxhvp.hvp[fresh-closure]", "jaxhvp.hvp[fresh-data]"),
        ("jaxhvp.hvp[fresh-data]", "jax.jit(jvp(grad))[fresh-data]"),
        ("jaxhvp.hvp(jit=False)", "jax.jit(jvp(grad))"),
        ("torch.autograd.functional.hvp", "jax.jit(jvp(grad))"),
        ("torch.autograd.functional.hvp", "jaxhvp.hvp"),
    ]
    lines = []
    for problem in dict.fromkeys(r["problem"] for r in rows if r["kind"] == "overhead"):
        parts = [
            f"{name} / {base} = {times[problem, name] / times[problem, base]:.2f}x"
            for name, base in comparisons
            if (problem, name) in times and (problem, base) in times
        ]
        if parts:
            lines.append(f"{problem}, per call: " + "; ".join(parts))
    return "\n".join(lines)


def drift_table(rows: list[dict]) -> str:
    """Each row timed in its own process against the same row timed with the others (the
    fair protocol), with the minor page faults per call in each: why the two differ."""
    head = [
        "problem",
        "impl",
        "own process ms",
        "together ms",
        "own / together",
        "faults per call, own",
        "faults per call, together",
    ]
    lines = [
        "Each row timed in its own process (fresh, as for peak memory) and timed together "
        "with the other rows of its problem in one process:",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        own = r.get("isolated_median_s", math.nan)
        if r["status"] != "ok" or own is None or not math.isfinite(own):
            continue
        cells = [
            r["problem"],
            r["impl"].replace("|", "\\|"),
            _ms(own),
            _ms(r["median_s"]),
            _num(own / r["median_s"], ".2f"),
            _num(r.get("isolated_faults_per_call", math.nan), ".0f"),
            _num(r.get("faults_per_call", math.nan), ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- plots -----------------------------------------------------------------------------------


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display), or None when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def plot(rows: list[dict], out: Path) -> list[Path]:
    """Time per HVP and HVP/grad ratio per problem and implementation (batched rows at k=8);
    the batched rows' time per vector against k. Only rows with status ok are drawn. No plots
    (an empty list) without matplotlib, which the ``bench`` extra installs."""
    if _pyplot() is None:
        return []
    ok = [r for r in rows if r["status"] == "ok"]
    paths = [
        _dots(
            ok,
            "per_vector_s",
            "time per HVP (GGN rows: per product, probe or exact diagonal), s (log scale; "
            "whiskers p20-p80; dashed: each framework's gradient; hollow: noisy)",
            out / "time_per_hvp.png",
        ),
        _dots(
            [r for r in ok if r["kind"] != "grad"],
            "per_grad",
            "time per HVP (GGN rows: product, probe, exact diagonal) / the same framework's "
            "gradient time (log scale; hollow: noisy)",
            out / "hvp_grad_ratio.png",
        ),
    ]
    batched = [r for r in ok if r["kind"] == "batched"]
    if batched:
        paths.append(_batched(batched, out / "batched.png"))
    return paths


def _dots(rows: list[dict], key: str, label: str, path: Path) -> Path:
    plt = _pyplot()
    rows = [r for r in rows if r["kind"] != "batched" or r["k"] == 8]  # one k per batched impl
    problems = list(dict.fromkeys(r["problem"] for r in rows)) or ["(no rows)"]
    heights = [max(1, sum(r["problem"] == p for r in rows)) for p in problems]
    fig, axes = plt.subplots(
        len(problems),
        1,
        figsize=(9, 0.22 * sum(heights) + 0.9 * len(problems)),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    for ax, problem in zip(axes[:, 0], problems):
        mine = [r for r in rows if r["problem"] == problem]
        for y, r in enumerate(mine):
            xerr = None
            if key == "per_vector_s":
                xerr = [
                    [max(r["median_s"] - r["p20_s"], 0) / r["k"]],
                    [max(r["p80_s"] - r["median_s"], 0) / r["k"]],
                ]
            color = COLORS[r["framework"]]
            ax.errorbar(
                r[key],
                y,
                xerr=xerr,
                fmt="o",
                color=color,
                ms=4,
                mfc="none" if r.get("noisy") else color,
            )
            if r["kind"] == "grad":
                ax.axvline(r[key], color=COLORS[r["framework"]], ls="--", lw=0.8)
        if key == "per_grad":
            ax.axvline(1.0, color="grey", ls="--", lw=0.8)
        ax.set_yticks(range(len(mine)), [r["impl"] for r in mine], fontsize=7)
        ax.set_ylim(len(mine) - 0.5, -0.5)
        ax.set_xscale("log")
        ax.grid(axis="x", which="both", alpha=0.3)
        ax.set_title(problem, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    axes[-1, 0].set_xlabel(label, fontsize=8)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c) for c in COLORS.values()]
    fig.legend(handles, list(COLORS), loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _batched(rows: list[dict], path: Path) -> Path:
    plt = _pyplot()
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(11 * len(problems), 5.5), squeeze=False)
    for ax, problem in zip(axes[0], problems):
        mine = [r for r in rows if r["problem"] == problem]
        for i, name in enumerate(dict.fromkeys(r["base_impl"] for r in mine)):
            series = sorted((r["k"], r["per_vector_s"]) for r in mine if r["base_impl"] == name)
            framework = next(r["framework"] for r in mine if r["base_impl"] == name)
            ax.plot(
                *zip(*series),
                marker="o",
                label=name,
                color=plt.cm.tab20(i % 20),
                linestyle={"jaxhvp": "-", "jax": "--", "torch": ":"}[framework],
            )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="vectors per call, k",
            ylabel="time per vector, s",
            title=f"{problem}: time per vector against k",
        )
        ax.grid(which="both", alpha=0.3)
        ax.legend(
            fontsize=7,
            title="solid jaxhvp, dashed jax, dotted torch",
            title_fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1),
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
