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


_GENERATOR = np.random.default_rng(0)


class Trainer:
    """A class whose other methods read a random generator and a logger."""

    def __init__(self):
        self.w = jnp.asarray(_GENERATOR.normal(size=3))

    def fit(self):
        import logging

        logging.getLogger(__name__).info("fitting %s", _GENERATOR.normal())

    def loss(self, w, x):
        return jnp.mean(jnp.tanh(x * w) ** 2)


def test_members_the_code_never_names_do_not_make_a_class_uncached():
    trainer, v = Trainer(), jnp.ones(3)
    for step in range(3):
        x = jnp.full(3, float(step))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = jaxhvp.hvp(lambda w: trainer.loss(w, x), trainer.w, v)[1]
        expected = jaxhvp.hvp(lambda w: trainer.loss(w, x), trainer.w, v, jit=False)[1]
        assert_trees_close(got, expected)
    info = jaxhvp.cache_info()
    assert (info.compilations, info.uncached) == (1, 0)


def test_products_of_an_operator_built_op_by_op_are_cached_without_warnings():
    data = np.random.default_rng(0).normal(size=(16, 3)).astype(np.float64)
    params = {"w": jnp.ones(3), "b": jnp.zeros(())}

    def loss(p):
        return jnp.mean(jnp.tanh(data @ p["w"] + p["b"]) ** 2)

    op = jaxhvp.hessian_operator(loss, params, jit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = op @ params
    expected = jaxhvp.hvp(loss, params, params, jit=False)[1]
    assert_trees_close(got, expected)


def test_fresh_treedefs_and_unravel_functions_are_keyed_by_value():
    from jax.flatten_util import ravel_pytree

    params = {"w": jnp.zeros(5), "b": jnp.zeros(())}

    def loss(p):
        return jnp.sum(jnp.sin(p["w"])) + p["b"] ** 2

    for _ in range(4):
        flat, unravel = ravel_pytree(params)
        jaxhvp.hvp(lambda y: loss(unravel(y)), flat, flat)
        leaves, treedef = jax.tree.flatten(params)
        jaxhvp.hvp(lambda ls: loss(jax.tree.unflatten(treedef, ls)), leaves, leaves)
    assert jaxhvp.cache_info().compilations == 2


def test_a_write_verdict_covers_the_function_whatever_values_it_reads():
    class Layer:
        made = 0

        def __init__(self):
            Layer.made += 1  # a write at every call, to a value the walk reads

    def f(x):
        Layer()
        return (x**2).sum()

    for _ in range(4):
        assert_trees_close(eager(f), 2 * V)
    info = jaxhvp.cache_info()
    assert info.compilations == 1 and info.uncached == 4


def test_a_numpy_array_in_aux_runs_uncached_for_its_outputs():
    def f(x):
        return (x**2).sum(), np.arange(3)

    with pytest.warns(UserWarning, match="returns Python objects other than arrays"):
        _, _, aux = jaxhvp.hvp(f, X, V, has_aux=True)
    assert type(aux) is np.ndarray


def test_step_apis_compile_once_over_fresh_batches():
    def loss(p, x, y, lam):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2) + lam * jnp.sum(p["w"] ** 2)

    rng = np.random.default_rng(0)
    for init, step in (
        (jaxhvp.newton_cg_init, jaxhvp.newton_cg_step),
        (jaxhvp.trust_ncg_init, jaxhvp.trust_ncg_step),
    ):
        jaxhvp.cache_clear()
        params = {"w": jnp.zeros(3), "b": jnp.zeros(())}
        state = init(params)
        counts = []
        for _ in range(4):
            x, y = jnp.asarray(rng.normal(size=(8, 3))), jnp.asarray(rng.normal(size=8))
            params, state, _ = step(loss, params, state, x, y, 1e-2)
            counts.append(jaxhvp.cache_info().compilations)
        assert counts[1] == counts[-1]
