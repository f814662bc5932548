r"""Times jit-compiled ``jaxhvp.minimize`` against ``scipy.optimize.minimize`` (same method).

Three implementations of each solve, all in float64 on the CPU:

* ``jaxhvp``: ``jax.jit(lambda x0, *args: jaxhvp.minimize(...))``; compilation is timed
  separately and excluded from the solve time;
* ``scipy+jax``: scipy with jit-compiled JAX callbacks for ``fun``, ``jac`` and ``hessp``
  (forward-over-reverse), each returning a numpy array;
* ``scipy+numpy``: scipy with hand-written numpy ``fun``, ``jac`` and ``hessp``
  (``scipy.optimize.rosen``, ``rosen_der``, ``rosen_hess_prod`` for the chained Rosenbrock).

Problems: the chained Rosenbrock (``scipy.optimize.rosen``) and the Moré-Garbow-Hillstrom
extended Rosenbrock (decoupled pairs), both with n = 1000 from (-1.2, 1, -1.2, 1, ...), and an
L2-regularised logistic regression (m samples, d = 1000 features).

Run from the repository root: ``python -m bench.minimize`` (about a minute). Each
time is the best of ``--repeat`` runs (default 3). On a machine shared with other jobs, pin
every implementation to one thread for steadier numbers::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 \
    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
    python -m bench.minimize --repeat 7
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.optimize

import jaxhvp

jax.config.update("jax_enable_x64", True)

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


def best_time(run, repeat):
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def time_jaxhvp(fun, x0, args, method, repeat):
    solve = jax.jit(lambda x0, *args: jaxhvp.minimize(fun, x0, args, method=method))
    x0, args = jnp.asarray(x0), tuple(jnp.asarray(a) for a in args)
    start = time.perf_counter()
    compiled = solve.lower(x0, *args).compile()
    compile_time = time.perf_counter() - start
    seconds, result = best_time(lambda: jax.block_until_ready(compiled(x0, *args)), repeat)
    counts = (int(result.nit), int(result.nfev), int(result.njev), int(result.nhev))
    return seconds, compile_time, counts, float(result.fun)


def scipy_with_jax(fun):
    value = jax.jit(fun)
    grad = jax.jit(jax.grad(fun))
    hessp = jax.jit(lambda x, p, *a: jax.jvp(lambda y: jax.grad(fun)(y, *a), (x,), (p,))[1])
    return (
        lambda x, *a: float(value(x, *a)),
        lambda x, *a: np.asarray(grad(x, *a)),
        lambda x, p, *a: np.asarray(hessp(x, p, *a)),
    )


def time_scipy(callbacks, x0, args, method, repeat):
    fun, jac, hessp = callbacks
    x0 = np.asarray(x0, np.float64)
    fun(x0, *args), jac(x0, *args), hessp(x0, x0, *args)  # compile the JAX callbacks first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, result = best_time(
            lambda: scipy.optimize.minimize(
                fun, x0, args=args, jac=jac, hessp=hessp, method=METHODS[method]
            ),
            repeat,
        )
    counts = (result.nit, result.nfev, result.njev, result.nhev)
    return seconds, counts, float(result.fun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2000, help="logistic regression m")
    options = parser.parse_args()

    x0 = np.tile([-1.2, 1.0], 500)
    data = logistic_problem(options.samples, 1000)
    problems = [
        (
            "chained Rosenbrock n=1000",
            chained_rosenbrock,
            x0,
            (),
            (scipy.optimize.rosen, scipy.optimize.rosen_der, scipy.optimize.rosen_hess_prod),
        ),
        (
            "extended Rosenbrock n=1000",
            extended_rosenbrock,
            x0,
            (),
            (extended_rosenbrock_np, extended_rosenbrock_grad_np, extended_rosenbrock_hessp_np),
        ),
        (
            f"logistic regression m={options.samples} d=1000",
            logistic,
            np.zeros(1000),
            data,
            (logistic_np, logistic_grad_np, logistic_hessp_np),
        ),
    ]
    print(
        f"jax {jax.__version__}, scipy {scipy.__version__}, {jax.devices()[0].device_kind}, "
        f"wall time, best of {options.repeat}"
    )
    header = (
        f"| {'problem':<34} | {'method':<9} | {'implementation':<14} | {'nit':>5} | "
        f"{'nfev':>5} | {'nhev':>6} | {'final f':>9} | {'time (ms)':>9} | "
        f"{'vs scipy+jax':>12} | {'vs scipy+numpy':>14} | {'compile (s)':>11} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, fun, start, args, numpy_callbacks in problems:
        for method in METHODS:
            rows = []
            seconds, compile_time, counts, value = time_jaxhvp(
                fun, start, args, method, options.repeat
            )
            rows.append(("jaxhvp", seconds, counts, value, f"{compile_time:11.2f}"))
            for label, callbacks in (
                ("scipy+jax", scipy_with_jax(fun)),
                ("scipy+numpy", numpy_callbacks),
            ):
                seconds, counts, value = time_scipy(callbacks, start, args, method, options.repeat)
                rows.append((label, seconds, counts, value, " " * 11))
            with_jax, with_numpy = rows[1][1], rows[2][1]
            for label, seconds, (nit, nfev, _, nhev), value, compiled in rows:
                print(
                    f"| {name:<34} | {method:<9} | {label:<14} | {nit:>5} | {nfev:>5} | "
                    f"{nhev:>6} | {value:9.2e} | {seconds * 1e3:9.1f} | "
                    f"{with_jax / seconds:11.1f}x | {with_numpy / seconds:13.1f}x | {compiled} |"
                )


if __name__ == "__main__":
    main()
