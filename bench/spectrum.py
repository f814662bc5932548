"""The spectrum comparison: top eigenvalue and trace of the benchmark MLP's loss Hessian,
jaxhvp.spectrum against PyHessian.

Part of ``python -m bench`` (``--sections spectrum``; ``python -m bench.spectrum [--quick]``
runs it alone). The model is the benchmark suite's ``mlp`` problem (``bench/problems.py``:
784-512-512-10, tanh, cross-entropy, batch 256, 669,706 float32 parameters; ``--quick``: a
64-32-32-10 MLP at batch 64), with the same weights and data in both frameworks. Each row
times the whole computation a user runs: building the Hessian (``jaxhvp.hessian_operator``;
PyHessian's ``hessian(model, criterion, data)``, one backward pass with
``create_graph=True``) and then the estimate. ``first call`` is the first call (compilation
included for JAX); then every row runs once per round, in an order rotating by one per round
(:func:`bench.fair.time_rounds`): a time is the median over rounds with its quartiles, and
``PyHessian / this row`` the median of the per-round ratios of PyHessian's time for the same
quantity over the row's.

References, in float64 with JAX: the top eigenvalue by ``spectrum.eigenvalues`` at
``tol=1e-10`` (residual-checked), the trace by Hutch++ with many probes (an estimate, with
its standard error).

PyHessian is optional (in the bench and test extras; ``pip install pyhessian==0.1``, which
needs only torch and numpy); without it the PyHessian rows say that it is missing.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxhvp
import jaxhvp.spectrum as spectrum

from . import fair, problems

EIG_TOL = 1e-3  # PyHessian's default tolerance (on the eigenvalue's change, there)
TRACE_PROBES = 99  # Hutch++ splits its products in thirds
PYHESSIAN_MAX_ITER = 100  # PyHessian's default for both quantities
ROUNDS, QUICK_ROUNDS = 7, 3
PYHESSIAN = {  # the PyHessian row of each quantity
    "top_eigenvalue": "PyHessian eigenvalues (power iteration)",
    "trace": "PyHessian trace (Hutchinson)",
}
INSTALL = "pip install pyhessian==0.1"


@dataclasses.dataclass
class Case:
    """One row: ``fn`` runs the whole computation (and blocks); ``summary`` reads its result."""

    kind: str  # "top_eigenvalue" or "trace"
    impl: str
    framework: str
    fn: Callable[[], Any]
    summary: Callable[[Any], dict]  # -> {"value", "hvps", and optionally "stderr", ...}


def measure(cases: list[Case], rounds: int) -> list[dict]:
    """First calls in order, then ``rounds`` rounds timing every case once per round, in an
    order rotating by one per round; ratios against PyHessian's row of the same quantity."""
    rows = []
    for case in cases:
        start = time.perf_counter()
        result = case.fn()
        first = time.perf_counter() - start
        rows.append({"first_call_s": first, **case.summary(result)})
    timings = fair.time_rounds({c.impl: c.fn for c in cases}, 0.0, rounds, rounds)
    out = []
    for case, r in zip(cases, rows):
        t = timings[case.impl]
        pyhessian = None if case.impl in PYHESSIAN.values() else timings.get(PYHESSIAN[case.kind])
        out.append(
            {
                "kind": case.kind,
                "impl": case.impl,
                "framework": case.framework,
                **r,
                "times": t.rounds,
                "median_s": t.median_s,
                "p25_s": t.percentile_s(25),
                "p75_s": t.percentile_s(75),
                "pyhessian_over": None if pyhessian is None else fair.ratio(pyhessian, t),
                "rounds": len(t.rounds),
            }
        )
    return out


# --- jaxhvp ----------------------------------------------------------------------------------


def jax_cases(problem: problems.Problem) -> list[Case]:
    params = jax.tree.map(jnp.asarray, problem.params)
    data = jax.tree.map(jnp.asarray, problem.data)
    jax_loss = problem.jax_loss  # the loss reads the data and this function, not the problem

    def loss(p: dict) -> jax.Array:
        return jax_loss(p, data)

    def top(tol: float | None) -> Callable[[], Any]:
        def run() -> Any:
            op = jaxhvp.hessian_operator(loss, params)
            return jax.block_until_ready(spectrum.eigenvalues(op, key=jax.random.key(0), tol=tol))

        return run

    def trace(method: str, batch_size: int | None) -> Callable[[], Any]:
        def run() -> Any:
            op = jaxhvp.hessian_operator(loss, params)
            est = spectrum.trace(
                op,
                key=jax.random.key(0),
                num_probes=TRACE_PROBES,
                method=method,
                probe_batch_size=batch_size,
            )
            return jax.block_until_ready(est)

        return run

    def eigen_summary(eig: Any) -> dict:
        converged = bool(eig.converged[0])
        return {"value": float(eig.values[0]), "hvps": int(eig.num_matvecs), "converged": converged}

    def trace_summary(est: Any) -> dict:
        return {
            "value": float(est.value),
            "hvps": int(est.num_matvecs),
            "stderr": float(est.stderr),
        }

    cases = [
        Case("top_eigenvalue", f"jaxhvp eigenvalues, {name}", "jax", top(tol), eigen_summary)
        for name, tol in ((f"tol={EIG_TOL:g}", EIG_TOL), ("tol=sqrt(eps)", None))
    ]
    for method, batch_size in (("hutch++", None), ("hutch++", 33), ("hutchinson", None)):
        label = f"jaxhvp trace, {method}" + (f", probe_batch_size={batch_size}" * bool(batch_size))
        cases.append(Case("trace", label, "jax", trace(method, batch_size), trace_summary))
    return cases


def references(problem: problems.Problem, trace_probes: int) -> dict[str, tuple[float, float]]:
    """Float64 references: ``{"top_eigenvalue": (value, 0), "trace": (value, stderr)}``."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), problem.params)
        data = {
            k: jnp.asarray(x, jnp.float64 if x.dtype.kind == "f" else x.dtype)
            for k, x in problem.data.items()
        }
        jax_loss = problem.jax_loss
        op = jaxhvp.hessian_operator(lambda p: jax_loss(p, data), params)
        eig = spectrum.eigenvalues(op, key=jax.random.key(1), tol=1e-10, max_matvecs=3000)
        assert bool(eig.converged[0]), eig
        est = spectrum.trace(
            op, key=jax.random.key(1), num_probes=trace_probes, probe_batch_size=50
        )
        return {
            "top_eigenvalue": (float(eig.values[0]), 0.0),
            "trace": (float(est.value), float(est.stderr)),
        }


# --- PyHessian -------------------------------------------------------------------------------


class TorchMLP(torch.nn.Module):
    """The benchmark MLP as an ``nn.Module`` (PyHessian takes a model and a criterion)."""

    def __init__(self, params: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for i in range(3):
            w, b = params[f"w{i}"], params[f"b{i}"]
            layer = torch.nn.Linear(*w.shape)
            with torch.no_grad():
                layer.weight.copy_(torch.from_numpy(w.T.copy()))  # y = x W^T + b in torch
                layer.bias.copy_(torch.from_numpy(b.copy()))
            self.layers.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = torch.tanh(x) if i < 2 else x
        return x


def pyhessian_version() -> str | None:
    """The installed PyHessian's version (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pyhessian")
    except PackageNotFoundError:
        return None


def pyhessian_cases(problem: problems.Problem) -> tuple[list[Case], list[str]]:
    """The PyHessian cases (none if it is missing) and notes. On a GPU, PyHessian's model
    and data are on the GPU (its ``cuda=True``)."""
    try:
        import pyhessian

        # The package's __init__ rebinds pyhessian.hessian to the class: fetch the module.
        pyhessian_hessian = importlib.import_module("pyhessian.hessian")
    except ImportError:
        return [], []
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    model = TorchMLP(problem.params).to(device)
    criterion = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(problem.data["x"].copy()).to(device)
    y = torch.from_numpy(problem.data["y"].astype(np.int64)).to(device)
    with torch.no_grad():
        torch_loss = float(criterion(model(x), y))
    jax_loss = float(problem.jax_loss(problem.params, problem.data))
    notes = [f"The same model in both: torch loss {torch_loss:.7g}, JAX loss {jax_loss:.7g}."]

    products = [0]  # PyHessian's single-batch products all go through this function
    # Counted once however often the cases are built (the original stays reachable).
    original = getattr(
        pyhessian_hessian.hessian_vector_product,
        "__wrapped__",
        pyhessian_hessian.hessian_vector_product,
    )

    def counted(*args: Any) -> Any:
        products[0] += 1
        return original(*args)

    counted.__wrapped__ = original  # type: ignore[attr-defined]
    pyhessian_hessian.hessian_vector_product = counted

    def comp() -> Any:
        with warnings.catch_warnings():  # backward(create_graph=True) warns of a ref cycle
            warnings.simplefilter("ignore")
            return pyhessian.hessian(model, criterion, data=(x, y), cuda=cuda)

    def top() -> Any:
        products[0] = 0
        torch.manual_seed(0)
        values, _ = comp().eigenvalues(maxIter=PYHESSIAN_MAX_ITER, tol=EIG_TOL, top_n=1)
        if cuda:
            torch.cuda.synchronize()
        return values[0], products[0]

    def trace() -> Any:
        products[0] = 0
        torch.manual_seed(0)
        samples = comp().trace(maxIter=PYHESSIAN_MAX_ITER, tol=EIG_TOL)
        if cuda:
            torch.cuda.synchronize()
        return samples, products[0]

    def trace_summary(result: Any) -> dict:
        samples, count = result
        stderr = float(np.std(samples, ddof=1) / math.sqrt(len(samples)))
        return {"value": float(np.mean(samples)), "hvps": count, "stderr": stderr}

    try:
        comp().density(iter=5, n_v=1)
        notes.append("PyHessian's `density` ran.")
    except Exception as error:  # reported as found
        message = str(error).splitlines()[0].replace("`", "'")
        notes.append(
            f"PyHessian's `density` fails with torch {torch.__version__}: "
            f"{type(error).__name__}: {message}"
        )
    cases = [
        Case(
            "top_eigenvalue",
            PYHESSIAN["top_eigenvalue"],
            "torch",
            top,
            lambda r: {"value": float(r[0]), "hvps": r[1]},
        ),
        Case("trace", PYHESSIAN["trace"], "torch", trace, trace_summary),
    ]
    return cases, notes


def problem_for(quick: bool) -> problems.Problem:
    """The suite's MLP; ``quick``: a 64-32-32-10 MLP at batch 64."""
    if quick:
        return problems._mlp(True, batch=64, widths=(64, 32, 32, 10))
    return problems.build("mlp", quick=False)


def run(quick: bool) -> dict[str, Any]:
    """Every row, timed as the module docstring says, with the float64 references."""
    problem = problem_for(quick)
    torch_cases, notes = pyhessian_cases(problem)
    rows = measure(jax_cases(problem) + torch_cases, QUICK_ROUNDS if quick else ROUNDS)
    refs = references(problem, 300 if quick else 999)
    version = pyhessian_version()
    if not torch_cases:  # the rows stay, saying why they did not run
        rows += [
            {"kind": kind, "impl": impl, "framework": "torch", "missing": True}
            for kind, impl in PYHESSIAN.items()
        ]
    for r in rows:
        if not r.get("missing"):
            r["rel_err"] = abs(r["value"] - refs[r["kind"]][0]) / abs(refs[r["kind"]][0])
    return {
        "quick": quick,
        "problem": f"{problem.description}, {problem.size:,} float32 parameters",
        "pyhessian": version,
        "jax_device": str(jax.devices()[0].device_kind),
        "torch_device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "protocol": PROTOCOL,
        "rows": rows,
        "references": refs,
        "notes": notes,
    }


PROTOCOL = (
    "Each time covers building the Hessian (`jaxhvp.hessian_operator`; PyHessian's "
    "`hessian(model, criterion, data)`) and the estimate; `first call` includes JAX's "
    "compilation. After the first calls every row runs once per round, in an order that "
    "rotates by one per round: a time is the median over rounds with the 25th-75th "
    "percentiles, `PyHessian / this row` the median of the per-round ratios of PyHessian's "
    "time for the same quantity over this row's (above 1: this row faster). PyHessian runs "
    f"with its defaults (`maxIter={PYHESSIAN_MAX_ITER}`, `tol={EIG_TOL:g}`); jaxhvp's traces "
    f"take {TRACE_PROBES} probes. References in float64: the top eigenvalue by "
    "`eigenvalues(tol=1e-10)` (residual-checked), the trace by Hutch++ with many probes (with "
    "its standard error)."
)


# --- report ----------------------------------------------------------------------------------


def _ratio(r: Any) -> str:
    return "-" if r is None else f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def markdown(data: dict[str, Any]) -> str:
    """The section's text: the problem and protocol, the table, the references and notes."""
    version = data["pyhessian"]
    installed = f"PyHessian {version}" if version else f"PyHessian not installed (`{INSTALL}`)"
    lines = [
        f"{data['problem']}; {installed}; JAX device: {data['jax_device']}, torch device: "
        f"{data['torch_device']}. {data['protocol']}",
        "",
        "| quantity | implementation | value | rel. error vs float64 reference | Hessian "
        "products | time (s) [p25-p75] | PyHessian / this row | first call (s) | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["rows"]:
        kind = r["kind"].replace("_", " ")
        if r.get("missing"):
            cells = [kind, r["impl"], f"not run: PyHessian is not installed (`{INSTALL}`)"]
            lines.append("| " + " | ".join(cells + ["-"] * 6) + " |")
            continue
        value = f"{r['value']:.6g}" + (f" ± {r['stderr']:.3g}" if "stderr" in r else "")
        cells = [
            kind,
            r["impl"],
            value,
            f"{r['rel_err']:.2e}",
            str(r["hvps"]),
            f"{r['median_s']:.3f} [{r['p25_s']:.3f}-{r['p75_s']:.3f}]",
            _ratio(r["pyhessian_over"]),
            f"{r['first_call_s']:.2f}",
            str(r["rounds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for kind, (ref, ref_err) in data["references"].items():
        spread = f" ± {ref_err:.3g} (standard error)" if ref_err else " (residual-checked)"
        lines.append(f"Reference {kind.replace('_', ' ')}: {ref:.8g}{spread}.")
    lines += [*(["", *data["notes"]] if data["notes"] else [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.spectrum [options]``: ``python -m bench --sections spectrum``."""
    from .__main__ import main as bench_main

    given = sys.argv[1:] if argv is None else list(argv)
    return bench_main(["--sections", "spectrum", *given])


if __name__ == "__main__":
    sys.exit(main())
