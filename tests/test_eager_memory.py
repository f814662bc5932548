"""Eager calls keep bounded memory: one bound for every kernel, a per-source limit, a full clear."""

import functools
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_trees_close

import jaxhvp
from jaxhvp._eager import _auto, _call, _walk


@pytest.fixture(autouse=True)
def _fresh_cache():
    jaxhvp.cache_clear(maxsize=64)
    yield
    jaxhvp.cache_clear(maxsize=64)


def test_a_changing_closed_over_float_compiles_at_most_16_kernels_then_runs_uncached():
    x, v = jnp.arange(3.0), jnp.ones(3)
    with pytest.warns(UserWarning, match=r"16 kernels.*closed-over float \(15\.0, then 16\.0\)"):
        for step in range(20):
            damping = float(step)
            _, hv = jaxhvp.hvp(lambda x: (x**3).sum() + damping * (x**2).sum(), x, v)
            assert_trees_close(hv, 6 * x * v + 2 * damping * v)
    info = jaxhvp.cache_info()
    assert info.compilations == 16
    assert info.uncached_reasons == (("recompiles", 4),)


def test_cache_clear_frees_every_kernel_guard_and_choice():
    params, v = {"w": jnp.ones(3)}, {"w": jnp.ones(3)}
    op = jaxhvp.hessian_operator(lambda p: (p["w"] ** 4).sum(), params, mode="auto")
    op @ v
    op.as_matrix()
    jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0))
    info = jaxhvp.cache_info()
    assert info.size >= 4  # the operator, its product, its matrix, the estimator
    assert _walk._guarded and _auto._choices
    jaxhvp.cache_clear()
    assert jaxhvp.cache_info() == jaxhvp.CacheInfo(0, 0, 0, 0, 64)
    assert not _walk._guarded and not _auto._choices and not _call.STORE.entries


def test_operator_products_are_cached_per_function_not_per_operator():
    def loss(p):
        return (p**4).sum()

    for step in range(5):
        op = jaxhvp.hessian_operator(loss, jnp.full(3, step + 1.0))
        assert_trees_close(op @ jnp.ones(3), 12 * (step + 1.0) ** 2 * jnp.ones(3))
    info = jaxhvp.cache_info()
    assert (info.compilations, info.size) == (2, 2)  # the linearisation and the product


def test_python_numbers_in_minimize_args_are_traced_not_keys():
    def fun(x, target, scale):
        return scale * ((x - target) ** 2).sum()

    for scale in (0.5, 1.0, 2.0):
        result = jaxhvp.minimize(fun, jnp.zeros(2), args=(jnp.ones(2), scale), method="newton-cg")
        assert_trees_close(result.x, jnp.ones(2), atol=1e-6)
    info = jaxhvp.cache_info()
    assert (info.compilations, info.hits) == (1, 2)


@pytest.mark.slow
def test_a_thousand_steps_with_a_changing_float_stay_within_a_memory_budget():
    """1,000 steps, each closing over a new float: resident memory grows by less than
    50 MB after the first 100 steps (16 kernels, then uncached), and the process lives."""
    script = textwrap.dedent(
        """
        import resource, warnings
        import jax.numpy as jnp
        import jaxhvp
        warnings.simplefilter("ignore")
        w = {f"w{i}": jnp.ones((64, 64)) for i in range(4)}
        x, v = jnp.ones(64), jnp.ones(64)
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
        for step in range(1000):
            damping = 1e-3 * step
            def loss(x):
                h = x
                for k in w:
                    h = jnp.tanh(w[k] @ h)
                return (h**2).sum() + damping * (x**2).sum()
            _, hv = jaxhvp.hvp(loss, x, v)
            if step == 100:
                start = rss()
        print(start, rss(), jaxhvp.cache_info().compilations)
        """
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-2000:]
    start, end, compilations = map(int, done.stdout.split())
    assert compilations == 16
    assert end - start < 50, (start, end)


def test_warnings_are_once_per_function_and_reason():
    x, v = jnp.arange(3.0), jnp.ones(3)
    seen = []

    def f(x):
        seen.append(1)
        return (x**3).sum()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for _ in range(3):
            jaxhvp.hvp(f, x, v)
    assert len([w for w in record if "uncached" in str(w.message)]) == 1
    assert jaxhvp.cache_info().uncached == 3


def _scaled_cube(x, scale):
    return scale * (x**3).sum()


def _scaled_square(x, scale):
    return scale * (x**2).sum()


def _scaled_quartic(x, scale):
    return scale * (x**4).sum()


def test_alternating_partials_of_many_functions_are_guarded_not_walked_again():
    funcs = [_scaled_cube, _scaled_square, _scaled_quartic]
    partials = [
        functools.partial(f, scale=s) for f in funcs for s in (jnp.ones(()), 2 * jnp.ones(()))
    ]
    x, v = jnp.arange(3.0), jnp.ones(3)
    for p in partials:
        jaxhvp.hvp(p, x, v)
    walks = jaxhvp.cache_info().walks
    for _ in range(3):
        for p in partials:
            jaxhvp.hvp(p, x, v)
    info = jaxhvp.cache_info()
    assert info.walks == walks  # each target function keeps its own guards
    assert info.compilations == 3
