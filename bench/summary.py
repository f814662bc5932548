"""``summary.md``: the comparisons a user reads, from the rows timed together by
:mod:`bench.fair`: time per product, jaxhvp's speed-up over each path with its spread
across rounds, and each framework's product over its own gradient; then the sections of
the same run (the optimiser comparison, :mod:`bench.minimize`; the spectrum comparison,
:mod:`bench.spectrum`), each also written alone (``optimize.md``, ``spectrum.md``).
``headline.md`` is the short form the README embeds: the device line and the time per
product with the speed-ups."""

from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any

from . import fair

# (column, row): one Hessian-vector product per call
COLUMNS = (
    ("jaxhvp", "jaxhvp.hvp"),
    ("hand-written JAX", "jax.jit(value+jvp(grad))"),
    ("torch hvp", "torch.autograd.functional.hvp"),
    ("torch double backward", "torch.double-backward"),
    ("torch.func", "torch.func.jvp(grad)"),
    ("torch.compile", "torch.compile(func.jvp(grad))"),
    ("torch.compile, value too", "torch.compile(value+func.jvp(grad))"),
)
JAXHVP = COLUMNS[0][1]
# (product, gradient) pairs: the product's cost in gradients, per framework
PER_GRAD = (
    ("jaxhvp.hvp", "jax.grad"),
    ("jax.jit(jvp(grad))", "jax.grad"),
    ("torch.compile(func.jvp(grad))", "torch.compile(grad)"),
    ("torch.autograd.functional.hvp", "torch.autograd.grad"),
)
PROTOCOL = (
    "Each problem's rows are timed in one process on the same data and threads: after a "
    f"warm-up, every round runs each row as a block of {fair.BLOCK} calls (the first "
    "untimed), in an order that rotates by one row per round. Times are medians over "
    "rounds; a ratio is the median of the per-round ratios, with the 25th-75th "
    "percentiles in brackets. `hand-written JAX` is `jax.jit` of the value and "
    "`jax.jvp(jax.grad(f))`, the same outputs as `jaxhvp.hvp`; `torch.compile` returns the "
    "gradient and the product but not the value, `torch.compile, value too` all three."
)


def build(
    timings: dict[str, dict[int, dict[str, fair.Timing]]],
    parameters: dict[str, int],
    machine: dict[str, Any],
    quick: bool = False,
    sections: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The summary as JSON-able data: per problem, the medians, the ratios and spreads; and
    the other sections' data (``{"optimize": ..., "spectrum": ...}``, those that ran)."""
    problems = []
    for name, groups in timings.items():
        single = groups.get(1, {})
        if JAXHVP not in single:
            continue
        base = single[JAXHVP]
        problems.append(
            {
                "problem": name,
                "parameters": parameters.get(name),
                "median_s": {row: single[row].median_s for _, row in COLUMNS if row in single},
                "speedup": {  # the other row's time over jaxhvp's
                    row: fair.ratio(single[row], base) for _, row in COLUMNS[1:] if row in single
                },
                "per_grad": {
                    f"{row} / {grad}": fair.ratio(single[row], single[grad])
                    for row, grad in PER_GRAD
                    if row in single and grad in single
                },
                "rounds": len(base.rounds),
                "faults_per_call": base.faults_per_call,
                "others_cores": base.others_cores,
            }
        )
    return {
        "date": datetime.date.today().isoformat(),
        "device": device(machine),
        "quick": quick,
        "machine": machine,
        "protocol": PROTOCOL,
        "problems": problems,
        "sections": dict(sections or {}),
    }


def device(machine: dict[str, Any]) -> str:
    """The device both frameworks ran on, in words."""
    if machine.get("gpu") or machine.get("jax_backend", "cpu") != "cpu":
        torch_gpu = machine.get("gpu") or "torch on the CPU"
        jax_kind = machine.get("jax_device_kind", "?")
        return f"GPU: {torch_gpu} (torch), {jax_kind} (JAX, backend {machine['jax_backend']})"
    return f"CPU: {machine['cpu']}, {machine['threads']} threads for each framework"


def _ms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def _spread(r: tuple[float, float, float] | None) -> str:
    return "-" if r is None else f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _faults(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _cores(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.2f} cores"


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def header(summary: dict[str, Any]) -> str:
    """The first line of every generated file: device, versions, date (and a quick run says
    so: its problems are reduced)."""
    m = summary["machine"]
    line = (
        f"Device: {summary['device']}. JAX {m['jax']} (jaxlib {m['jaxlib']}), "
        f"torch {m['torch']}, Python {m['python']}, jaxhvp {m['jaxhvp']} "
        f"({m['jaxhvp_commit'] or 'no commit'}); {summary['date']}."
    )
    if summary.get("quick"):
        line += " A `--quick` run: reduced problems and repetitions, not the full suite."
    return line


def _present(problems: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c, r) for c, r in COLUMNS if any(r in p["median_s"] for p in problems)]


def products_markdown(summary: dict[str, Any]) -> str:
    """The products' tables: time per product, the speed-ups, the products in gradients."""
    problems = summary["problems"]
    present = _present(problems)
    lines = [summary["protocol"], "", "Time per Hessian-vector product (ms):", ""]
    lines += _table(
        ["problem", "parameters", *(c for c, _ in present)],
        [
            [p["problem"], f"{p['parameters']:,}", *(_ms(p["median_s"].get(r)) for _, r in present)]
            for p in problems
        ],
    )
    lines += [
        "",
        "jaxhvp's speed-up: the other path's time over jaxhvp's (above 1: jaxhvp faster):",
        "",
    ]
    others = present[1:]
    lines += _table(
        ["problem", *others_head(others), "rounds", "jaxhvp's page faults", "other processes"],
        [
            [
                p["problem"],
                *(_spread(p["speedup"].get(r)) for _, r in others),
                str(p["rounds"]),
                _faults(p.get("faults_per_call")),
                _cores(p.get("others_cores")),
            ]
            for p in problems
        ],
    )
    lines += [
        "",
        "`jaxhvp's page faults`: minor page faults per `jaxhvp.hvp` call (median over rounds): "
        "memory the allocator handed back and that each call maps and zero-fills again "
        "(the benchmark page, 'Rows in separate processes'). "
        "`other processes`: the CPU cores other processes used on average while the problem "
        "was timed (near 0 on a quiet machine; more means the times above are disturbed).",
    ]
    pairs = [
        f"{r} / {g}" for r, g in PER_GRAD if any(f"{r} / {g}" in p["per_grad"] for p in problems)
    ]
    if pairs:
        lines += ["", "A product's time in gradients of the same framework:", ""]
        lines += _table(
            ["problem", *(f"`{pair}`" for pair in pairs)],
            [
                [p["problem"], *(_spread(p["per_grad"].get(pair)) for pair in pairs)]
                for p in problems
            ],
        )
    return "\n".join(lines)


# (section key, heading in summary.md, file written alone)
SECTIONS = (
    ("optimize", "Second-order optimisers: jaxhvp.minimize against scipy", "optimize.md"),
    ("spectrum", "Top eigenvalue and trace: jaxhvp.spectrum against PyHessian", "spectrum.md"),
)


def section_markdown(key: str, data: dict[str, Any]) -> str:
    """A section's text, from its module (:mod:`bench.minimize`, :mod:`bench.spectrum`)."""
    if key == "optimize":
        from . import minimize

        return minimize.markdown(data)
    from . import spectrum

    return spectrum.markdown(data)


def markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the header, the products (when they ran), then the other sections."""
    parts = [header(summary)]
    if summary["problems"]:
        parts.append("### Hessian-vector products\n\n" + products_markdown(summary))
    for key, heading, _ in SECTIONS:
        if key in summary["sections"]:
            text = section_markdown(key, summary["sections"][key])
            parts.append(f"### {heading}\n\n{text}")
    return "\n\n".join(parts)


def headline(summary: dict[str, Any]) -> str:
    """``headline.md``: the header and one table, each path's time per product with its
    time over jaxhvp's in brackets (the README embeds it)."""
    problems = summary["problems"]
    present = _present(problems)
    lines = [
        header(summary),
        "",
        "Time per Hessian-vector product in ms; in parentheses, the path's time over jaxhvp's "
        "(median of per-round ratios; above 1: jaxhvp faster):",
        "",
    ]

    def cell(p: dict[str, Any], row: str) -> str:
        ms, ratio = _ms(p["median_s"].get(row)), p["speedup"].get(row)
        return ms if ratio is None or ms == "-" else f"{ms} ({ratio[0]:.2f}x)"

    lines += _table(
        ["problem", "parameters", *(c for c, _ in present)],
        [
            [p["problem"], f"{p['parameters']:,}", *(cell(p, r) for _, r in present)]
            for p in problems
        ],
    )
    return "\n".join(lines)


def others_head(columns: list[tuple[str, str]]) -> list[str]:
    return [f"{column} / jaxhvp" for column, _ in columns]


START, END = "<!-- bench summary: start -->", "<!-- bench summary: end -->"


def embed(text: str, path: Path) -> None:
    """Replaces what stands between the START and END markers in ``path`` with ``text``."""
    page = path.read_text()
    if page.count(START) != 1 or page.count(END) != 1:
        raise ValueError(f"{path} needs one {START!r} and one {END!r} line")
    head, rest = page.split(START)
    _, tail = rest.split(END)
    path.write_text(f"{head}{START}\n{text.strip()}\n{END}{tail}")


def embedded(path: Path) -> str:
    """The text between the markers in ``path``."""
    return path.read_text().split(START)[1].split(END)[0].strip()


def write(summary: dict[str, Any], out: Path) -> list[Path]:
    """summary.md and summary.json; headline.md when the products ran; each section's file
    (optimize.md, spectrum.md) with the same header."""
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "summary.md").write_text(markdown(summary) + "\n")
    written = [out / "summary.md", out / "summary.json"]
    if summary["problems"]:
        (out / "headline.md").write_text(headline(summary) + "\n")
        written.append(out / "headline.md")
    for key, _, name in SECTIONS:
        if key in summary["sections"]:
            text = section_markdown(key, summary["sections"][key])
            (out / name).write_text(f"{header(summary)}\n\n{text}\n")
            written.append(out / name)
    return written
