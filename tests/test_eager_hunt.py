"""Cases found by trying to break the eager contract: each eager call equals jit=False (or a
hand computation), runs uncached with a warning, and leaves no tracer in user objects."""

import collections
import functools
import itertools
import random
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

import jaxhvp

X, V = jnp.arange(3.0), jnp.ones(3)


@pytest.fixture(autouse=True)
def _fresh_cache():
    jaxhvp.cache_clear()
    yield
    jaxhvp.cache_clear()


def eager(func, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return jaxhvp.hvp(func, X, V, **kwargs)[1]


def no_tracer_in(*containers):
    for c in containers:
        values = c.values() if isinstance(c, dict) else c
        assert not any(isinstance(x, jax.core.Tracer) for x in values)


def test_a_memo_filled_while_tracing_keeps_no_tracer():
    memo, w = {}, jnp.full(3, 2.0)

    def weight():
        if "w" not in memo:
            memo["w"] = w * 1.0
        return memo["w"]

    def f(x):
        return (x**2 * weight()).sum()

    assert_trees_close(eager(f), 4 * V)
    no_tracer_in(memo)
    assert_trees_close(f(X), (X**2 * 2).sum())  # a plain call still works


def test_a_cached_property_and_a_counter_behave_as_with_jit_false():
    class Model:
        @functools.cached_property
        def w(self):
            return jnp.full(3, 3.0)

    model, calls = Model(), []

    def f(x):
        calls.append(1)
        return (model.w * x**2).sum()

    assert_trees_close(eager(f), 6 * V)
    no_tracer_in(model.__dict__)
    assert calls == [1]  # run once, op by op, as jit=False would


def test_iterators_and_random_draws_run_uncached():
    counter = itertools.count(1.0)
    f = lambda x: (x**2).sum() * next(counter)  # noqa: E731
    g = lambda x: (x**2).sum() * random.random()  # noqa: E731
    with pytest.warns(UserWarning, match="uncached.*(Iterator|count|state)"):
        first = jaxhvp.hvp(f, X, V)[1]
    second = eager(f)
    assert_trees_close(second, 2 * first)  # 1, then 2: the iterator advanced
    with pytest.warns(UserWarning, match="uncached.*random numbers"):
        jaxhvp.hvp(g, X, V)


def test_a_numpy_buffer_reached_after_a_jax_array_is_still_finished_before_returning():
    holder = {"w": jnp.ones((400, 400))}

    def f(x):
        w = holder["w"]
        return ((w @ jnp.tile(x, 134)[:400]) ** 2).sum()

    x = X
    jaxhvp.hvp(f, x, V)
    buffer = np.ones((400, 400))
    holder["w"] = buffer
    expected = jaxhvp.hvp(f, x, V, jit=False)[1]
    got = jaxhvp.hvp(f, x, V)[1]
    buffer[:] = 0  # reused at once: the result must not change
    assert_trees_close(got, expected)


@pytest.mark.parametrize(("first", "second"), [({1: 1.0}, {True: 1.0}), ({0.0: 1.0}, {-0.0: 1.0})])
def test_dict_keys_are_keyed_by_type_and_bits(first, second):
    table = dict(first)

    def f(x):
        key = next(iter(table))
        return (x**2).sum() * (3.0 if str(key) in ("True", "-0.0") else 1.0)

    assert_trees_close(eager(f), 2 * V)
    table.clear()
    table.update(second)
    assert_trees_close(eager(f), eager(f, jit=False))
    assert_trees_close(eager(f), 6 * V)


def test_a_fresh_object_every_call_is_bounded_like_a_fresh_float():
    for _ in range(20):
        tag = object()
        eager(lambda x, tag=tag: (x**3).sum() + 0 * (tag is None))
    assert jaxhvp.cache_info().compilations == 16


def test_non_array_objects_in_the_output_are_fresh_every_call():
    class Note:
        def __init__(self, text):
            self.text = text

    def f(x):
        return (x**2).sum(), Note("ok")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        first = jaxhvp.hvp(f, X, V, has_aux=True)[2]
        second = jaxhvp.hvp(f, X, V, has_aux=True)[2]
    assert first is not second and first.text == second.text == "ok"


W_BY_NAME = jnp.ones(3)


def test_globals_read_by_name_at_run_time_are_never_stale(monkeypatch):
    def f(x):
        return (x**2 * globals()["W_BY_NAME"]).sum()

    assert_trees_close(eager(f), 2 * V)
    monkeypatch.setitem(globals(), "W_BY_NAME", 3 * jnp.ones(3))
    assert_trees_close(eager(f), 6 * V)


def test_metaclass_and_defaultdict_factory_values_are_walked():
    class Meta(type):
        scale = 1.0

    class Model(metaclass=Meta):
        pass

    values = collections.defaultdict(lambda: 2.0)
    f = lambda x: (x**2).sum() * Model.scale * values["missing"]  # noqa: E731
    assert_trees_close(eager(f), 4 * V)
    Meta.scale = 3.0
    values.default_factory = lambda: 5.0
    values.pop("missing")
    assert_trees_close(eager(f), 30 * V)


def test_user_modules_anywhere_and_attributes_added_later():
    module = types.ModuleType("settings")
    module.W = jnp.ones(3)
    holder = types.SimpleNamespace(settings=module)
    f = lambda x: (x**2 * holder.settings.W).sum() * getattr_default(module)  # noqa: E731
    assert_trees_close(eager(f), 2 * V)
    module.W = 2 * jnp.ones(3)
    module.S = 5.0
    assert_trees_close(eager(f), 20 * V)


def getattr_default(module):
    return module.S if hasattr(module, "S") else 1.0


def test_a_float64_numpy_array_narrowed_to_float32_is_said_once():
    with jax.enable_x64(False):
        data = np.array([1e8, 1.0, -1e8])
        f = lambda x: (x**2).sum() * data.sum()  # noqa: E731
        with pytest.warns(UserWarning, match="float64 numpy array.*as float32"):
            jaxhvp.hvp(f, X.astype(jnp.float32), V.astype(jnp.float32))
