"""Eager calls run cached kernels: counted compilations, fresh closures, never stale values."""

import dataclasses
import functools
import gc
import threading
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

import jaxhvp
from jaxhvp._eager import _walk


@pytest.fixture(autouse=True)
def _fresh_cache():
    jaxhvp.cache_clear(maxsize=256)
    yield
    jaxhvp.cache_clear(maxsize=256)


def cube(x):
    return (x**3).sum()


def weighted_cube(x, w):
    return (w * x**3).sum()


def expected_weighted(x, w, v):
    """H v of sum(w * x^3): 6 w x v."""
    return 6 * w * x * v


def counts():
    info = jaxhvp.cache_info()
    return info.hits, info.misses, info.compilations


def test_repeated_calls_compile_once():
    x, v = jnp.arange(3.0), jnp.ones(3)
    for _ in range(5):
        _, hv = jaxhvp.hvp(cube, x, v)
    assert counts() == (4, 1, 1)
    assert_trees_close(hv, 6 * x * v)


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_fresh_closures_over_new_arrays_compile_once_and_see_current_values(name):
    x, v = jnp.arange(3.0), jnp.ones(3)
    for step in range(5):
        w = jnp.full(3, float(step))
        _, hv = getattr(jaxhvp, name)(lambda x: weighted_cube(x, w), x, v)
        assert_trees_close(hv, expected_weighted(x, w, v))
    assert counts() == (4, 1, 1)


def test_fresh_nested_closures_and_partials():
    x, v = jnp.arange(3.0), jnp.ones(3)

    def make_loss(w):
        def inner(x):
            return weighted_cube(x, w)

        return lambda x: inner(x) + (x**2).sum()

    for step in range(3):
        w = jnp.full(3, step + 1.0)
        _, hv = jaxhvp.hvp(make_loss(w), x, v)
        assert_trees_close(hv, expected_weighted(x, w, v) + 2 * v)
        _, hv = jaxhvp.hvp(functools.partial(weighted_cube, w=w), x, v)
        assert_trees_close(hv, expected_weighted(x, w, v))
    assert jaxhvp.cache_info().compilations == 2


def test_closure_over_a_pytree_batch():
    params = {"w": jnp.ones((3, 2))}
    v = {"w": jnp.full((3, 2), 0.5)}

    def loss(p, batch):
        x, y = batch
        return ((jnp.tanh(x @ p["w"]) - y) ** 2).mean()

    for k in range(3):
        batch = (jax.random.normal(jax.random.PRNGKey(k), (4, 3)), jnp.zeros((4, 2)))
        _, hv = jaxhvp.hvp(lambda p: loss(p, batch), params, v)
        expected = jax.jvp(jax.grad(lambda p: loss(p, batch)), (params,), (v,))[1]
        assert_trees_close(hv, expected)
    assert jaxhvp.cache_info().compilations == 1


def test_closed_over_python_scalars_are_part_of_the_key_never_stale():
    x, v = jnp.arange(3.0), jnp.ones(3)
    for scale in [1.0, 2.0, 1.0]:
        _, hv = jaxhvp.hvp(lambda x: scale * cube(x), x, v)
        assert_trees_close(hv, scale * 6 * x * v)
    assert counts() == (1, 2, 2)


def test_many_changing_scalars_warn_once_with_the_fix():
    x, v = jnp.arange(3.0), jnp.ones(3)
    with pytest.warns(UserWarning, match=r"jnp\.asarray") as record:
        for step in range(20):
            jaxhvp.hvp(lambda x: step * cube(x), x, v)
    assert len(record) == 1
    assert "jit=False" in str(record[0].message)


WEIGHT = jnp.ones(3)


def reads_global(x):
    return weighted_cube(x, WEIGHT)


def test_rebound_global_arrays_are_arguments_not_constants():
    global WEIGHT
    x, v = jnp.arange(3.0), jnp.ones(3)
    try:
        for step in range(3):
            WEIGHT = jnp.full(3, step + 2.0)
            _, hv = jaxhvp.hvp(reads_global, x, v)
            assert_trees_close(hv, expected_weighted(x, WEIGHT, v))
    finally:
        WEIGHT = jnp.ones(3)
    assert jaxhvp.cache_info().compilations == 1


class Model:
    """A plain object, as code ported from PyTorch keeps its data."""

    def __init__(self, w):
        self.w = w
        self.calls = 0

    def loss(self, x):
        return weighted_cube(x, self.w)


@dataclasses.dataclass(frozen=True)
class FrozenModel:
    w: jax.Array

    def loss(self, x):
        return weighted_cube(x, self.w)


@pytest.mark.parametrize("cls", [Model, FrozenModel])
def test_bound_methods_see_current_attributes(cls):
    x, v = jnp.arange(3.0), jnp.ones(3)
    model = cls(jnp.ones(3))
    for step in range(3):
        if cls is Model:
            model.w = jnp.full(3, step + 2.0)
        else:
            model = cls(jnp.full(3, step + 2.0))
        _, hv = jaxhvp.hvp(model.loss, x, v)
        assert_trees_close(hv, expected_weighted(x, model.w, v))
    assert jaxhvp.cache_info().compilations == 1


def test_functions_with_side_effects_run_each_time_as_with_jit_false():
    seen = []

    def f(x):
        seen.append(x.shape)  # the user's own list, at every call
        return cube(x)

    with pytest.warns(UserWarning, match="uncached.*changes objects it reads"):
        jaxhvp.hvp(f, jnp.ones(3), jnp.ones(3))
    jaxhvp.hvp(f, jnp.ones(3), jnp.ones(3))
    assert len(seen) >= 2 and seen[-1] == (3,)
    assert jaxhvp.cache_info().uncached_reasons == (("writes", 2),)


def test_containers_mutated_in_place_are_never_stale():
    coefficients = [1.0, 2.0]
    x, v = jnp.arange(3.0), jnp.ones(3)
    for scale in [1.0, 3.0]:
        coefficients[1] = scale
        _, hv = jaxhvp.hvp(lambda x: coefficients[0] * coefficients[1] * cube(x), x, v)
        assert_trees_close(hv, scale * 6 * x * v)


def test_numpy_closures_are_read_at_every_call():
    w = np.ones(3)
    x, v = jnp.arange(3.0), jnp.ones(3)
    for step in range(3):
        w[:] = step + 1.0  # mutated in place
        _, hv = jaxhvp.hvp(lambda x: weighted_cube(x, w), x, v)
        assert_trees_close(hv, expected_weighted(x, jnp.asarray(w), v))


def test_each_shape_dtype_and_structure_compiles_once():
    def run(inputs):
        v = jax.tree.map(jnp.ones_like, inputs)
        for _ in range(2):
            jaxhvp.hvp(lambda p: sum(cube(a) for a in jax.tree.leaves(p)), inputs, v)

    run(jnp.ones(3))
    run(jnp.ones(4))  # shape
    run(jnp.ones(4, jnp.float32))  # dtype
    run({"a": jnp.ones(4)})  # structure
    run({"a": jnp.ones(4)})
    assert jaxhvp.cache_info().compilations == 4


def test_hessian_is_cached_too():
    for _ in range(3):
        h = jaxhvp.hessian(cube, jnp.arange(3.0))
    assert_trees_close(h, jnp.diag(6 * jnp.arange(3.0)))
    assert counts() == (2, 1, 1)


def test_outer_traces_bypass_the_cache():
    x, v = jnp.arange(3.0), jnp.ones(3)
    jax.jit(lambda x: jaxhvp.hvp(cube, x, v))(x)
    jax.vmap(lambda v: jaxhvp.hvp(cube, x, v)[1])(jnp.eye(3))
    jax.grad(lambda x: jaxhvp.hvp(cube, x, v, create_graph=True)[1].sum())(x)
    # Concrete arguments, but a function of the outer trace's values: still just traced.
    w = x + 1.0

    def product_with(w):
        return jaxhvp.hvp(lambda y: weighted_cube(y, w), x, v, create_graph=True)[1]

    assert_trees_close(jax.jit(product_with)(w), expected_weighted(x, w, v))
    assert_trees_close(jax.vmap(product_with)(jnp.stack([w, w]))[1], expected_weighted(x, w, v))
    assert_trees_close(jax.grad(lambda w: product_with(w).sum())(w), 6 * x * v)
    assert counts() == (0, 0, 0)


def test_jit_false_runs_op_by_op():
    w = jnp.ones(3)
    _, hv = jaxhvp.hvp(lambda x: weighted_cube(x, w), jnp.arange(3.0), jnp.ones(3), jit=False)
    assert_trees_close(hv, 6 * jnp.arange(3.0))
    assert counts() == (0, 0, 0)


def test_errors_while_tracing_read_as_eager_errors_and_do_not_poison_the_cache():
    with pytest.raises(jaxhvp.HVPError) as error:
        jaxhvp.hvp(lambda x: x**2, jnp.ones(3), jnp.ones(3))
    assert not any("JAX has removed" in n for n in getattr(error.value, "__notes__", []))
    _, hv = jaxhvp.hvp(cube, jnp.ones(3), jnp.ones(3))
    assert_trees_close(hv, 6 * jnp.ones(3))


def test_cache_is_bounded_and_releases_arrays():
    jaxhvp.cache_clear(maxsize=4)
    x, v = jnp.arange(3.0), jnp.ones(3)
    for step in range(10):
        jaxhvp.hvp(lambda x: step * cube(x), x, v)
    assert jaxhvp.cache_info().size == 4

    big = np.ones(3)
    ref = weakref.ref(big)
    jaxhvp.hvp(lambda x: weighted_cube(x, big), x, v)  # noqa: F821 (deleted below)
    del big
    gc.collect()
    assert ref() is None


def test_eviction_spares_kernels_in_use():
    jaxhvp.cache_clear(maxsize=3)
    x, v = jnp.arange(3.0), jnp.ones(3)
    for step in range(10):
        jaxhvp.hvp(cube, x, v)  # the hot kernel, used between every newcomer
        jaxhvp.hvp(lambda x: step * cube(x), x, v)
    info = jaxhvp.cache_info()
    assert info.size == 3
    assert (info.hits, info.misses) == (9, 11)  # cube compiled once, each newcomer once


class Box:
    def __init__(self, w):
        self.w = w


def test_functions_reading_too_much_run_uncached_and_never_stale():
    boxes = [Box(jnp.ones(3)) for _ in range(_walk.MAX_NODES // 2)]  # two values each

    def f(x):
        return weighted_cube(x, boxes[0].w)

    x, v = jnp.arange(3.0), jnp.ones(3)
    with pytest.warns(UserWarning, match="uncached, op by op.*more than 4096 Python values"):
        _, hv = jaxhvp.hvp(f, x, v)
    assert_trees_close(hv, expected_weighted(x, boxes[0].w, v))
    boxes[0].w = jnp.full(3, 10.0)
    _, hv = jaxhvp.hvp(f, x, v)  # warned once per function
    assert_trees_close(hv, expected_weighted(x, boxes[0].w, v))
    assert counts() == (0, 0, 0)


def test_large_pytrees_are_walked_and_guarded():
    params = {f"w{i}": jnp.full(3, float(i)) for i in range(1000)}

    def f(x):
        return weighted_cube(x, params["w1"]) + sum(p.sum() for p in params.values()) * 0

    x, v = jnp.arange(3.0), jnp.ones(3)
    jaxhvp.hvp(f, x, v)
    params["w1"] = jnp.full(3, 5.0)
    _, hv = jaxhvp.hvp(f, x, v)
    assert_trees_close(hv, expected_weighted(x, params["w1"], v))
    assert counts() == (1, 1, 1)


def test_threads_share_kernels_and_get_their_own_values():
    x, v = jnp.arange(3.0, dtype=jnp.float32), jnp.ones(3, jnp.float32)

    def loss_with(w):
        return lambda x: weighted_cube(x, w)

    # Compile first, in a thread too: jax.jit keys on the thread's own config (x64 is on in
    # this test's main thread only).
    warm_up = threading.Thread(target=jaxhvp.hvp, args=(loss_with(v), x, v))
    warm_up.start()
    warm_up.join()
    results, errors = {}, []

    def worker(k):
        try:
            for step in range(20):
                w = jnp.full(3, float(k * 100 + step), jnp.float32)
                _, hv = jaxhvp.hvp(loss_with(w), x, v)
                results[k, step] = (np.asarray(hv), np.asarray(expected_weighted(x, w, v)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, expected in results.values():
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    hits, misses, compilations = counts()
    assert (hits, misses, compilations) == (80, 1, 1)


def test_cache_clear_validates_maxsize():
    with pytest.raises(ValueError, match="maxsize must be a positive int"):
        jaxhvp.cache_clear(maxsize=0)
