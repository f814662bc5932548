r"""The optimiser comparison: jit-compiled ``jaxhvp.minimize`` against ``scipy.optimize.minimize``.

Part of ``python -m bench`` (``--sections optimize``; ``python -m bench.minimize [--quick]``
runs it alone). Three implementations of each solve, same method, in float64
(``jax.enable_x64`` around the suite only) on JAX's default device:

* ``jaxhvp``: ``jax.jit(lambda x0, *args: jaxhvp.minimize(...))``; compilation is timed
  separately (``compile (s)``) and excluded from the solve time;
* ``scipy+jax``: scipy with jit-compiled JAX callbacks for ``fun``, ``jac`` and ``hessp``
  (forward-over-reverse), each returning a numpy array, compiled before the timing;
* ``scipy+numpy``: scipy with hand-written numpy ``fun``, ``jac`` and ``hessp``
  (``scipy.optimize.rosen``, ``rosen_der``, ``rosen_hess_prod`` for the chained Rosenbrock).

Problems: the chained Rosenbrock (``scipy.optimize.rosen``) and the Moré-Garbow-Hillstrom
extended Rosenbrock (decoupled pairs), both with n = 1000 from (-1.2, 1, -1.2, 1, ...), and an
L2-regularised logistic regression (m = 2000 samples, d = 1000 features); ``--quick``:
n = 100, m = 500, d = 100.

Timing (:func:`bench.fair.time_rounds`): the three solves of a (problem, method) run in one
process, once per round in an order rotating by one per round, after a first untimed call
each; a time is the median over rounds, a ratio the median of the per-round ratios with its
quartiles.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.optimize

import jaxhvp

from . import fair

METHODS = {"newton-cg": "Newton-CG", "trust-ncg": "trust-ncg"}


# --- the problems, in JAX and in numpy ----------------------------------------------------------


def chained_rosenbrock(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def extended_rosenbrock(x):
    odd, even = x[0::2], x[1::2]
    return jnp.sum(100.0 * (even - odd**2) ** 2 + (1.0 - odd) ** 2)


def extended_rosenbrock_np(x):
    odd, even = x[0::2], x[1::2]
    return float(np.sum(100.0 * (even - odd**2) ** 2 + (1.0 - odd) ** 2))


def extended_rosenbrock_grad_np(x):
    odd, even = x[0::2], x[1::2]
    g = np.empty_like(x)
    g[0::2] = -400.0 * odd * (even - odd**2) - 2.0 * (1.0 - odd)
    g[1::2] = 200.0 * (even - odd**2)
    return g


def extended_rosenbrock_hessp_np(x, p):
    odd, even = x[0::2], x[1::2]
    p_odd, p_even = p[0::2], p[1::2]
    h11 = 1200.0 * odd**2 - 400.0 * even + 2.0
    h12 = -400.0 * odd
    hp = np.empty_like(x)
    hp[0::2] = h11 * p_odd + h12 * p_even
    hp[1::2] = h12 * p_odd + 200.0 * p_even
    return hp


def logistic(w, features, labels, lam):
    z = features @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - labels * z) + 0.5 * lam * (w @ w)


def logistic_np(w, features, labels, lam):
    z = features @ w
    return float(np.mean(np.logaddexp(0.0, z) - labels * z) + 0.5 * lam * (w @ w))


def logistic_grad_np(w, features, labels, lam):
    s = scipy.special.expit(features @ w)
    return features.T @ (s - labels) / len(labels) + lam * w


def logistic_hessp_np(w, p, features, labels, lam):
    s = scipy.special.expit(features @ w)
    return features.T @ (s * (1 - s) * (features @ p)) / len(labels) + lam * p


def logistic_problem(m, d, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((m, d)) / np.sqrt(d)
    labels = (features @ rng.standard_normal(d) * 3 + 0.5 * rng.standard_normal(m) > 0) * 1.0
    return (features, labels, 1e-4)


# --- the three implementations ------------------------------------------------------------------

IMPLS = ("jaxhvp", "scipy+jax", "scipy+numpy")
TARGET_S, MIN_ROUNDS, MAX_ROUNDS = 0.5, 7, 100  # per solve: timed seconds, rounds
QUICK_TARGET_S, QUICK_MIN_ROUNDS = 0.02, 3


def problems(quick: bool) -> list[tuple[str, Callable, np.ndarray, tuple, tuple]]:
    """``(name, fun, x0, args, numpy (fun, jac, hessp))`` for each problem."""
    n, (m, d) = (100, (500, 100)) if quick else (1000, (2000, 1000))
    x0 = np.tile([-1.2, 1.0], n // 2)
    rosen = (scipy.optimize.rosen, scipy.optimize.rosen_der, scipy.optimize.rosen_hess_prod)
    extended = (extended_rosenbrock_np, extended_rosenbrock_grad_np, extended_rosenbrock_hessp_np)
    return [
        (f"chained Rosenbrock n={n}", chained_rosenbrock, x0, (), rosen),
        (f"extended Rosenbrock n={n}", extended_rosenbrock, x0, (), extended),
        (
            f"logistic regression m={m} d={d}",
            logistic,
            np.zeros(d),
            logistic_problem(m, d),
            (logistic_np, logistic_grad_np, logistic_hessp_np),
        ),
    ]


def jaxhvp_solve(fun: Callable, x0: Any, args: tuple, method: str) -> tuple[Callable, float]:
    """The compiled solve as a zero-argument call, and its compilation time."""
    solve = jax.jit(lambda x0, *args: jaxhvp.minimize(fun, x0, args, method=method))
    x0, args = jnp.asarray(x0), tuple(jnp.asarray(a) for a in args)
    start = time.perf_counter()
    compiled = solve.lower(x0, *args).compile()
    compile_s = time.perf_counter() - start
    return lambda: jax.block_until_ready(compiled(x0, *args)), compile_s


def scipy_with_jax(fun: Callable) -> tuple[Callable, Callable, Callable]:
    value = jax.jit(fun)
    grad = jax.jit(jax.grad(fun))
    hessp = jax.jit(lambda x, p, *a: jax.jvp(lambda y: jax.grad(fun)(y, *a), (x,), (p,))[1])
    return (
        lambda x, *a: float(value(x, *a)),
        lambda x, *a: np.asarray(grad(x, *a)),
        lambda x, p, *a: np.asarray(hessp(x, p, *a)),
    )


def scipy_solve(callbacks: tuple, x0: Any, args: tuple, method: str) -> Callable:
    fun, jac, hessp = callbacks
    x0 = np.asarray(x0, np.float64)
    fun(x0, *args), jac(x0, *args), hessp(x0, x0, *args)  # compile the JAX callbacks first

    def call() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return scipy.optimize.minimize(
                fun, x0, args=args, jac=jac, hessp=hessp, method=METHODS[method]
            )

    return call


def run(quick: bool) -> dict[str, Any]:
    """Every (problem, method, implementation), timed as the module docstring says."""
    target, min_rounds = (QUICK_TARGET_S, QUICK_MIN_ROUNDS) if quick else (TARGET_S, MIN_ROUNDS)
    rows = []
    with jax.enable_x64(True):
        for name, fun, x0, args, numpy_callbacks in problems(quick):
            for method in METHODS:
                jaxhvp_call, compile_s = jaxhvp_solve(fun, x0, args, method)
                calls = {
                    "jaxhvp": jaxhvp_call,
                    "scipy+jax": scipy_solve(scipy_with_jax(fun), x0, args, method),
                    "scipy+numpy": scipy_solve(numpy_callbacks, x0, args, method),
                }
                results = {impl: call() for impl, call in calls.items()}  # first calls
                timings = fair.time_rounds(calls, target, min_rounds, MAX_ROUNDS)
                base = timings["jaxhvp"]
                for impl, result in results.items():
                    t = timings[impl]
                    rows.append(
                        {
                            "problem": name,
                            "method": method,
                            "impl": impl,
                            "nit": int(result.nit),
                            "nfev": int(result.nfev),
                            "nhev": int(result.nhev),
                            "fun": float(result.fun),
                            "success": bool(result.success),
                            "median_s": t.median_s,
                            "p25_s": t.percentile_s(25),
                            "p75_s": t.percentile_s(75),
                            "over_jaxhvp": None if impl == "jaxhvp" else fair.ratio(t, base),
                            "compile_s": compile_s if impl == "jaxhvp" else None,
                            "rounds": len(t.rounds),
                        }
                    )
    return {
        "quick": quick,
        "scipy": scipy.__version__,
        "jax_device": str(jax.devices()[0].device_kind),
        "protocol": PROTOCOL,
        "rows": rows,
    }


PROTOCOL = (
    "`jaxhvp.minimize` compiled with `jax.jit` (compilation excluded, shown apart) against "
    "`scipy.optimize.minimize` with the same method, its `fun`, `jac` and `hessp` either "
    "jit-compiled JAX functions (`scipy+jax`) or hand-written numpy (`scipy+numpy`), in "
    "float64. The three solves of each problem and method run in one process, one call each "
    "per round in an order that rotates by one per round, after an untimed first call; a time "
    "is the median over rounds with the 25th-75th percentiles, `time / jaxhvp's` the median "
    "of the per-round ratios with their quartiles (above 1: jaxhvp faster). `nit`, `nfev` "
    "and `nhev`: iterations, objective evaluations and Hessian products, as scipy counts them."
)


def _ratio(r: Any) -> str:
    return "-" if r is None else f"{r[0]:.2f}x [{r[1]:.2f}-{r[2]:.2f}]"


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def markdown(data: dict[str, Any]) -> str:
    """The section's text: the protocol, then one row per (problem, method, implementation)."""
    head = [
        "problem",
        "method",
        "implementation",
        "nit",
        "nfev",
        "nhev",
        "final f",
        "time (ms) [p25-p75]",
        "time / jaxhvp's",
        "compile (s)",
        "rounds",
    ]
    lines = [
        f"{data['protocol']} scipy {data['scipy']}; JAX device: {data['jax_device']}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in data["rows"]:
        cells = [
            r["problem"],
            r["method"],
            r["impl"],
            str(r["nit"]),
            str(r["nfev"]),
            str(r["nhev"]),
            f"{r['fun']:.2e}" + ("" if r["success"] else " (not converged)"),
            f"{_ms(r['median_s'])} [{_ms(r['p25_s'])}-{_ms(r['p75_s'])}]",
            _ratio(r["over_jaxhvp"]),
            "-" if r["compile_s"] is None else f"{r['compile_s']:.2f}",
            str(r["rounds"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.minimize [options]``: ``python -m bench --sections optimize``."""
    from .__main__ import main as bench_main

    given = sys.argv[1:] if argv is None else list(argv)
    return bench_main(["--sections", "optimize", *given])


if __name__ == "__main__":
    sys.exit(main())
