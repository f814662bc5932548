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

FIGSIZE = (8.0, 4.5)  # inches: a page's width
DPI = 120
# Each framework's hues, in order of appearance within a figure: jaxhvp green, JAX blue,
# torch (curvlinops and BackPACK included) warm.
PALETTES = {
    "jaxhvp": ["#1b7837", "#7fbc41", "#00441b", "#b8e186", "#35978f"],
    "jax": ["#2166ac", "#92c5de", "#053061", "#4393c3"],
    "torch": [
        "#d6604d",
        "#f4a582",
        "#b2182b",
        "#8c510a",
        "#dfc27d",
        "#762a83",
        "#c51b7d",
        "#e08214",
    ],
}
# The GGN figure's groups: the rows' kinds
GGN_GROUPS = {
    "ggn": "GGN product",
    "diagonal": "Hutchinson, per probe",
    "exact_diagonal": "exact diagonal",
}


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display), or None when not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot

    return matplotlib.pyplot


def colors(series: list[tuple[str, str]]) -> dict[str, str]:
    """A colour per series name, from its framework's palette in order: ``series`` is
    ``[(name, framework), ...]``."""
    used: dict[str, int] = {}
    out = {}
    for name, framework in series:
        palette = PALETTES[framework]
        out[name] = palette[used.get(framework, 0) % len(palette)]
        used[framework] = used.get(framework, 0) + 1
    return out


def plot(rows: list[dict], out: Path, columns: tuple[tuple[str, str], ...] = ()) -> list[Path]:
    """One figure of grouped bars per family of rows (log-scale time per product, whiskers
    from the 20th to the 80th percentile over rounds), only rows with status ok:
    ``products.png``: the summary's ``columns`` (``(label, row)``) on every problem;
    ``batched.png``: the k-vector rows, grouped by problem and k; ``ggn.png``: the GGN
    products, per-probe Hutchinson diagonals and exact diagonals. A figure without rows is
    not drawn; no plots (an empty list) without matplotlib, which the ``bench`` extra
    installs."""
    if _pyplot() is None:
        return []
    ok = [r for r in rows if r["status"] == "ok"]
    paths = []
    labels = dict((row, label) for label, row in columns)
    single = [r for r in ok if r["k"] == 1 and r["impl"] in labels]
    if single:
        bars = [(r["problem"], labels[r["impl"]], r["framework"], r) for r in single]
        order = [label for label, _ in columns]
        problems = list(dict.fromkeys(r["problem"] for r in single))
        bars.sort(key=lambda b: (problems.index(b[0]), order.index(b[1])))
        paths.append(
            _grouped_bars(
                bars,
                "One Hessian-vector product per call",
                "time per product (ms, log scale)",
                out / "products.png",
            )
        )
    batched = [r for r in ok if r["kind"] == "batched"]
    if batched:
        bars = [(f"{r['problem']}, k={r['k']}", r["base_impl"], r["framework"], r) for r in batched]
        problems = list(dict.fromkeys(r["problem"] for r in batched))
        bars.sort(key=lambda b: (problems.index(b[3]["problem"]), b[3]["k"]))
        paths.append(
            _grouped_bars(
                bars,
                "k Hessian-vector products per call",
                "time per product (ms, log scale)",
                out / "batched.png",
                legend_columns=2,
            )
        )
    ggn = [r for r in ok if r["kind"] in GGN_GROUPS]
    if ggn:
        kinds = list(GGN_GROUPS)
        bars = [
            (f"{r['problem']}\n{GGN_GROUPS[r['kind']]}", r["base_impl"], r["framework"], r)
            for r in ggn
        ]
        problems = list(dict.fromkeys(r["problem"] for r in ggn))
        bars.sort(key=lambda b: (kinds.index(b[3]["kind"]), problems.index(b[3]["problem"])))
        paths.append(
            _grouped_bars(
                bars,
                "Generalized Gauss-Newton: product, Hutchinson diagonal, exact diagonal",
                "ms per product, probe or diagonal (log scale)",
                out / "ggn.png",
                legend_columns=2,
            )
        )
    return paths


def _grouped_bars(
    bars: list[tuple[str, str, str, dict]],
    title: str,
    ylabel: str,
    path: Path,
    legend_columns: int = 4,
) -> Path:
    """``bars``: ``(group, series, framework, row)``, drawn in that order within each group
    (groups in order of first appearance); each bar the row's time per vector."""
    plt = _pyplot()
    groups = list(dict.fromkeys(b[0] for b in bars))
    series = list(dict.fromkeys((b[1], b[2]) for b in bars))
    color = colors(series)
    widest = max(sum(b[0] == g for b in bars) for g in groups)
    width = 0.84 / widest
    fig, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    drawn: dict[str, Any] = {}
    for x, group in enumerate(groups):
        mine = [b for b in bars if b[0] == group]
        for i, (_, name, _, r) in enumerate(mine):
            k = r["k"]
            median = r["median_s"] / k * 1e3
            low, high = r["p20_s"] / k * 1e3, r["p80_s"] / k * 1e3
            yerr = [[max(median - low, 0)], [max(high - median, 0)]]
            position = x + (i - (len(mine) - 1) / 2) * width
            drawn[name] = ax.bar(
                position,
                median,
                width * 0.92,
                color=color[name],
                yerr=yerr,
                error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.25"},
            )
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", which="major", alpha=0.35)
    ax.grid(axis="y", which="minor", alpha=0.12)
    ax.set_axisbelow(True)
    names = [name for name, _ in series]
    fig.legend(
        [drawn[n] for n in names],
        names,
        loc="outside lower center",
        ncol=legend_columns,
        fontsize=7,
        frameon=False,
    )
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _plain_log_ticks(ax: Any) -> None:
    """Tick labels as plain numbers (0.01, 2, 50, 1000); the minor ticks labelled too on an
    axis spanning less than two decades (2x and 5x) or one (all)."""
    from matplotlib.ticker import FuncFormatter

    low, high = ax.get_ylim()
    leads = range(2, 10) if high / low < 10 else (2, 5) if high / low < 100 else ()

    def minor(y: float, _: Any) -> str:
        lead = round(y / 10 ** math.floor(math.log10(y)), 6)
        return f"{y:g}" if lead in leads else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="y", which="minor", labelsize=7)
