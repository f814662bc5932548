"""The eager-call contract (issue 11): an eager call returns what ``jit=False`` returns.

An eager call (``jit=True``, the default) either returns exactly what the same call with
``jit=False`` returns, or runs as ``jit=False`` does (uncached, saying so once with a
``UserWarning``). Each test below is one case from the issue's "Why" list, written as a new
user would hit it, through the public API only. Most make two or more consecutive calls
with something changed in between (a rebound global, a dict mutated in place, a fresh
closure over new data) and compare every call against ``jit=False``, so that a stale kernel
fails the test. Where ``jit=False`` is not available (``minimize``, the spectrum
estimators) the reference is a hand computation or a dense ``jax.hessian``.

Warnings: pyproject turns every warning into an error. The eager side of each comparison
records warnings and accepts ``UserWarning`` only (the documented uncached fallback); the
``jit=False`` side must not warn at all.
"""

import enum
import math
import sys
import types
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close

import jaxhvp

THIS_MODULE = sys.modules[__name__]

with jax.enable_x64(True):  # float64 constants, as the tests run with x64 (conftest)
    X = jnp.array([0.3, -1.2, 0.7])
    V = jnp.array([1.0, 0.5, -2.0])
    A = jnp.array([1.0, 2.0, 3.0])
    B = jnp.array([-0.5, 0.25, 2.0])
    C = jnp.array([4.0, -1.0, 0.5])


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


def run_eager(call):
    """``call(jit=True)``, accepting only ``UserWarning``s (the uncached fallback)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call(jit=True)
    others = [w for w in caught if not issubclass(w.category, UserWarning)]
    assert not others, [str(w.message) for w in others]
    return result


def eager_and_reference(call):
    """``call(jit=True)`` (UserWarnings allowed) and then ``call(jit=False)`` (no warning)."""
    eager = run_eager(call)
    reference = call(jit=False)
    return eager, reference


def check(call):
    """Asserts the eager call returns what ``jit=False`` returns; returns the reference."""
    eager, reference = eager_and_reference(call)
    assert_trees_close(eager, reference)
    return reference


def assert_differ(first, second):
    """The change between two calls changed the answer (so staleness would be visible)."""
    a = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(first)])
    b = np.concatenate([np.ravel(np.asarray(leaf)) for leaf in jax.tree_util.tree_leaves(second)])
    assert a.shape != b.shape or not np.allclose(a, b), "the change did not change the answer"


def operator_products(op):
    return op.value, op.grad, op.mv(V), op @ V


# Every public entry point that takes ``func`` and ``jit``, applied at (X, V).
ENTRY_POINTS = {
    "hvp": lambda f, jit: jaxhvp.hvp(f, X, V, jit=jit),
    "vhp": lambda f, jit: jaxhvp.vhp(f, X, V, jit=jit),
    "hessian": lambda f, jit: jaxhvp.hessian(f, X, jit=jit),
    "hessian_operator": lambda f, jit: operator_products(jaxhvp.hessian_operator(f, X, jit=jit)),
}


def hvp_call(func):
    return lambda jit: jaxhvp.hvp(func, X, V, jit=jit)


# ---------------------------------------------------------------------------------------
# Stale or wrong numbers
# ---------------------------------------------------------------------------------------

# Recursion: the recursive call must see the current arrays, not the first call's.
REC_W = A


def recursive_loss(x, depth=3):  # calls itself by its global name, reads a global array
    if depth == 0:
        return jnp.sum(REC_W * x**2)
    return jnp.sin(recursive_loss(x, depth - 1)) + jnp.sum(REC_W * x**3) / depth


def make_recursive(w):  # calls itself through its own closure cell, closes over an array
    def loss(x, depth=3):
        if depth == 0:
            return jnp.sum(w * x**2)
        return jnp.sin(loss(x, depth - 1)) + jnp.sum(w * x**3) / depth

    return loss


def make_recursive_by_global_name(w):  # closes over an array, calls itself by global name
    def loss(x, depth=3):
        if depth == 0:
            return jnp.sum(w * x**2)
        return jnp.sin(RECURSIVE_CLOSURE(x, depth - 1)) + jnp.sum(w * x**3) / depth

    return loss


RECURSIVE_CLOSURE = make_recursive_by_global_name(A)


@pytest.mark.parametrize("how", ["global-function", "closure-cell", "closure-global-name"])
def test_recursive_function_sees_current_arrays(how, monkeypatch):
    references = []
    for w in (A, B, C):
        if how == "global-function":
            monkeypatch.setattr(THIS_MODULE, "REC_W", w)
            func = recursive_loss
        elif how == "closure-cell":
            func = make_recursive(w)
        else:
            func = make_recursive_by_global_name(w)
            monkeypatch.setattr(THIS_MODULE, "RECURSIVE_CLOSURE", func)
        references.append(check(hvp_call(func)))
    assert_differ(references[0], references[1])


# Dict order: a closed-over dict is iterated in insertion order, as Python does.
def make_ordered_loss(params):
    def loss(x):
        first, second = params.values()  # insertion order: "z" before "a"
        return jnp.sum(first * x**3) + jnp.sum(second * x) ** 2

    return loss


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_closed_over_dict_iterates_in_insertion_order(entry):
    params = {"z": A, "a": B}  # not sorted: sorted order would swap the two
    loss = make_ordered_loss(params)
    first = check(lambda jit: ENTRY_POINTS[entry](loss, jit))
    params["z"] = C  # in place: same dict, same closure, same order
    second = check(lambda jit: ENTRY_POINTS[entry](loss, jit))
    assert_differ(first, second)
    # and against a hand computation: H = diag(6 z x) + 2 a a^T
    expected = jnp.diag(6 * C * X) + 2 * jnp.outer(B, B)
    hv = jaxhvp.hvp(loss, X, V, jit=False)[1]
    assert_trees_close(hv, expected @ V)


def test_closed_over_dict_order_in_spectrum_eigenvalues():
    sym_a = jnp.diag(jnp.array([5.0, 1.0, 0.5, 0.1]))
    sym_b = jnp.diag(jnp.array([9.0, 2.0, 1.0, 0.2]))
    mats = {"z": sym_a, "a": sym_b}  # sorted order would pick sym_b

    def matvec(u):
        first, _ = mats.values()
        return first @ u

    like = jnp.zeros(4)
    eig = jaxhvp.spectrum.eigenvalues(matvec, k=2, key=jax.random.key(0), like=like)
    assert_trees_close(eig.values, jnp.array([5.0, 1.0]), rtol=1e-7, atol=1e-7)
    mats["z"] = 2 * sym_a  # in place
    eig = jaxhvp.spectrum.eigenvalues(matvec, k=2, key=jax.random.key(0), like=like)
    assert_trees_close(eig.values, jnp.array([10.0, 2.0]), rtol=1e-7, atol=1e-7)


# Function attributes: ``f.scale`` is read at every call.
def attribute_loss(x):
    return attribute_loss.scale * jnp.sum(x**3) + jnp.sum(attribute_loss.offset * x) ** 2


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_function_attributes_are_read_at_every_call(entry, monkeypatch):
    monkeypatch.setattr(attribute_loss, "scale", 2.0, raising=False)
    monkeypatch.setattr(attribute_loss, "offset", A, raising=False)
    first = check(lambda jit: ENTRY_POINTS[entry](attribute_loss, jit))
    attribute_loss.scale = 3.0  # a Python number
    second = check(lambda jit: ENTRY_POINTS[entry](attribute_loss, jit))
    attribute_loss.offset = B  # an array
    third = check(lambda jit: ENTRY_POINTS[entry](attribute_loss, jit))
    assert_differ(first, second)
    assert_differ(second, third)


# Signed zero: -0.0 and 0.0 compare equal but are different values.
def make_signed(c):
    def loss(x):
        return jnp.copysign(1.0, c) * jnp.sum(x**3) + math.copysign(2.0, c) * jnp.sum(x**2)

    return loss


@pytest.mark.parametrize(
    "zeros", [(0.0, -0.0, 0.0), (-0.0, 0.0, -0.0)], ids=["pos-first", "neg-first"]
)
def test_closure_over_signed_zero(zeros):
    references = [check(hvp_call(make_signed(c))) for c in zeros]
    assert_differ(references[0], references[1])


# Subclasses of dict, list and tuple holding arrays.
class AttrDict(dict):
    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


class Layers(list):
    def first(self):
        return self[0]


class Pair(tuple):
    @property
    def second(self):
        return self[1]


def test_closed_over_dict_subclass_mutated_in_place():
    config = AttrDict(w=A, b=B)

    def loss(x):
        return jnp.sum(config.w * x**3) + jnp.sum(config["b"] * x) ** 2

    first = check(hvp_call(loss))
    config["w"] = C
    second = check(hvp_call(loss))
    config["b"] = A
    third = check(hvp_call(loss))
    assert_differ(first, second)
    assert_differ(second, third)


def test_closed_over_list_subclass_mutated_in_place():
    layers = Layers([A, B])

    def loss(x):
        return jnp.sum(layers.first() * x**3) + jnp.sum(layers[1] * x) ** 2

    first = check(hvp_call(loss))
    layers[0] = C
    second = check(hvp_call(loss))
    layers.reverse()  # [B, C]
    third = check(hvp_call(loss))
    assert_differ(first, second)
    assert_differ(second, third)


def test_closure_over_tuple_subclass():
    def make(pair):
        def loss(x):
            return jnp.sum(pair[0] * x**3) + jnp.sum(pair.second * x) ** 2

        return loss

    references = [check(hvp_call(make(Pair(p)))) for p in [(A, B), (C, B), (B, A)]]
    assert_differ(references[0], references[1])


# A parent back-reference: ``m.head.model is m``.
class Head:
    def __init__(self, model, b):
        self.model = model
        self.b = b


class BackRefModel:
    def __init__(self, w, b):
        self.w = w
        self.head = Head(self, b)

    def loss(self, x):
        scale = 1.0 if self.head.model is self else 100.0
        return scale * (jnp.sum(self.head.model.w * x**3) + jnp.sum(self.head.b * x) ** 2)


def test_parent_back_reference():
    model = BackRefModel(A, B)
    first = check(hvp_call(model.loss))
    model.w = C
    second = check(hvp_call(model.loss))
    model.head.b = A
    third = check(hvp_call(model.loss))
    assert_differ(first, second)
    assert_differ(second, third)
    assert model.head.model is model


# A tied (shared) layer reached twice, compared by identity in the function.
class Layer:
    def __init__(self, w):
        self.w = w


class TiedNet:
    def __init__(self, layer):
        self.encoder = layer
        self.decoder = layer


def test_tied_layer_reached_twice_keeps_identity():
    net = TiedNet(Layer(jnp.outer(A, B) / 4 + jnp.eye(3)))

    def loss(x):
        tied = net.encoder is net.decoder
        h = jnp.tanh(net.encoder.w @ x)
        return (1.0 if tied else 10.0) * jnp.sum((net.decoder.w.T @ h) ** 2)

    first = check(hvp_call(loss))
    net.encoder.w = jnp.outer(C, A) / 8 + jnp.eye(3)  # both see it: one layer
    second = check(hvp_call(loss))
    net.decoder = Layer(net.encoder.w)  # untied: same values, another object
    third = check(hvp_call(loss))
    assert_differ(first, second)
    assert_differ(second, third)


# An object with __slots__ and a __dict__: the slot is read at every call.
class Slotted:
    __slots__ = ("__dict__", "w")

    def __init__(self, w, b):
        self.w = w  # a slot
        self.b = b  # in __dict__

    def loss(self, x):
        return jnp.sum(self.w * x**3) + jnp.sum(self.b * x) ** 2


def test_slot_of_object_with_dict_is_read_at_every_call():
    obj = Slotted(A, B)
    first = check(hvp_call(obj.loss))
    obj.w = C
    second = check(hvp_call(obj.loss))
    obj.b = A
    third = check(hvp_call(obj.loss))
    assert_differ(first, second)
    assert_differ(second, third)


# A global array read through a property and through a helper method of a plain object.
PROPERTY_W = A


class Config:
    @property
    def weight(self):
        return PROPERTY_W

    def get_weight(self):
        return PROPERTY_W


CONFIG = Config()


def loss_through_property(x):
    return jnp.sum(CONFIG.weight * x**3)


def loss_through_method(x):
    return jnp.sum(CONFIG.get_weight() * x**3)


@pytest.mark.parametrize(
    "func", [loss_through_property, loss_through_method], ids=["property", "method"]
)
def test_global_read_through_property_or_method(func, monkeypatch):
    references = []
    for w in (A, B, C):
        monkeypatch.setattr(THIS_MODULE, "PROPERTY_W", w)
        references.append(check(hvp_call(func)))
    assert_differ(references[0], references[1])


# A custom pytree whose aux (static) data is a list, mutated in place.
@jax.tree_util.register_pytree_node_class
class Polynomial:
    def __init__(self, coeffs, powers):
        self.coeffs = coeffs  # an array: a child
        self.powers = powers  # a list of ints: aux data

    def tree_flatten(self):
        return (self.coeffs,), self.powers

    @classmethod
    def tree_unflatten(cls, powers, children):
        return cls(children[0], powers)

    def __call__(self, x):
        return sum(self.coeffs[i] * jnp.sum(x**p) for i, p in enumerate(self.powers))


def test_custom_pytree_aux_list_mutated_in_place():
    poly = Polynomial(jnp.array([1.0, 0.5]), [2, 3])

    def loss(x):
        return poly(x)

    first = check(hvp_call(loss))
    poly.powers[1] = 4  # in place: the same list object
    second = check(hvp_call(loss))
    poly.coeffs = jnp.array([2.0, -1.0])
    third = check(hvp_call(loss))
    assert_differ(first, second)
    assert_differ(second, third)


# jax.grad / jax.checkpoint (and other JAX wrappers) of a user function reading a global array.
TRANSFORM_W = A


def make_inner():
    """A fresh user function (its own JAX trace caches) that reads the global TRANSFORM_W."""

    def inner(x):
        return jnp.sum(TRANSFORM_W * jnp.sin(x)) + jnp.sum(TRANSFORM_W * x**3)

    return inner


def with_grad(inner):
    grad = jax.grad(inner)  # made once, used by every call
    return lambda x: jnp.sum(grad(x) ** 2)


def with_inline_grad(inner):
    return lambda x: jnp.sum(jax.grad(inner)(x) ** 2)


def with_custom_jvp(inner):
    wrapped = jax.custom_jvp(inner)

    @wrapped.defjvp
    def _(primals, tangents):
        return jax.jvp(inner, primals, tangents)

    return lambda x: wrapped(x) * jnp.sum(x**2)


def with_scan(inner):
    return lambda x: jax.lax.scan(lambda c, _: (c + inner(x), None), 0.0, None, length=2)[0]


def with_checkpoint(inner):
    wrapped = jax.checkpoint(inner)
    return lambda x: wrapped(x) * jnp.sum(x**2)


def with_jit(inner):
    wrapped = jax.jit(inner)  # a user function decorated with @jax.jit
    return lambda x: wrapped(x) * jnp.sum(x**2)


def with_cond(inner):
    return lambda x: jax.lax.cond(x[0] > 0, inner, lambda y: -inner(y), x)


def times_square(inner):  # with_checkpoint and with_jit without the wrapper
    return lambda x: inner(x) * jnp.sum(x**2)


def as_where(inner):  # with_cond without lax.cond (x[0] > 0 at X: the first branch)
    return lambda x: jnp.where(x[0] > 0, inner(x), -inner(x))


# name: (wrap, None) where jit=False sees the rebound global; else (wrap, the same function
# without the JAX wrapper). jax.checkpoint, jax.jit and lax.cond keep their first trace of
# `inner` (JAX's own caches, keyed by the function), so jit=False itself computes with the
# first value of the global. There the eager call must return either what jit=False returns
# or the current values' answer (never a third, never crash or leak a tracer).
TRANSFORMS = {
    "grad": (with_grad, None),
    "inline-grad": (with_inline_grad, None),
    "custom_jvp": (with_custom_jvp, None),
    "scan": (with_scan, None),
    "checkpoint": (with_checkpoint, times_square),
    "checkpoint-as-func": (jax.checkpoint, lambda inner: inner),
    "jit-decorated": (with_jit, times_square),
    "cond": (with_cond, as_where),
}


def trees_close(actual, expected):
    try:
        assert_trees_close(actual, expected)
    except AssertionError:
        return False
    return True


@pytest.mark.parametrize("transform", list(TRANSFORMS))
def test_transformed_user_function_reading_global(transform, monkeypatch):
    wrap, unwrapped = TRANSFORMS[transform]
    inner = make_inner()
    func = wrap(inner)
    answers = []
    for w in (A, B, C):
        monkeypatch.setattr(THIS_MODULE, "TRANSFORM_W", w)
        if unwrapped is None:
            answers.append(check(hvp_call(func)))
            continue
        eager, reference = eager_and_reference(hvp_call(func))
        current = jaxhvp.hvp(unwrapped(inner), X, V, jit=False)  # the current values' answer
        assert trees_close(eager, reference) or trees_close(eager, current)
        answers.append(current)
    assert_differ(answers[0], answers[1])


# jax.debug.callback: each call reaches its own target (a fresh closure's list, a bound method).
class Recorder:
    def __init__(self):
        self.seen = []

    def record(self, s):
        self.seen.append(float(s))


def make_logged(target, w):
    def loss(x):
        jax.debug.callback(target, jnp.sum(w * x**2))
        return jnp.sum(w * x**3)

    return loss


def closure_target():
    log = []

    def target(s):  # a fresh closure over a fresh list
        log.append(float(s))

    return target, log


def method_target():
    recorder = Recorder()
    return recorder.record, recorder.seen


@pytest.mark.parametrize("make_target", [closure_target, method_target], ids=["closure", "method"])
def test_debug_callback_reaches_each_calls_own_target(make_target):
    logs = []
    for w in (A, B, C):
        target, log = make_target()
        ref_target, ref_log = make_target()
        eager = run_eager(lambda jit: jaxhvp.hvp(make_logged(target, w), X, V, jit=jit))
        reference = jaxhvp.hvp(make_logged(ref_target, w), X, V, jit=False)
        jax.effects_barrier()
        assert_trees_close(eager, reference)
        assert len(log) == len(ref_log) > 0  # as often as jit=False runs it
        np.testing.assert_allclose(log, ref_log, rtol=1e-12)  # with this call's values
        logs.append((log, list(log)))
    for log, snapshot in logs:  # later calls did not append to earlier calls' targets
        assert log == snapshot


# spectrum.batch_hessian_operator after a global array is rebound (both jit settings).
BATCH_SCALE = A


def batch_loss(params, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ (BATCH_SCALE * params)) - y) ** 2)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_batch_hessian_operator_after_global_rebound(jit, monkeypatch):
    key1, key2 = jax.random.split(jax.random.key(0))
    batches = (jax.random.normal(key1, (4, 5, 3)), jax.random.normal(key2, (4, 5)))
    params = jnp.array([0.2, -0.4, 0.1])

    def mean_loss(p):  # the hand computation: the mean over the batches, dense
        return jnp.mean(jnp.stack([batch_loss(p, (bx, by)) for bx, by in zip(*batches)]))

    matrices = []
    for w in (A, B, C):
        monkeypatch.setattr(THIS_MODULE, "BATCH_SCALE", w)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            op = jaxhvp.spectrum.batch_hessian_operator(batch_loss, params, batches, jit=jit)
            got = (op.value, op.grad, op.mv(V), op.as_matrix())
        dense = jax.hessian(mean_loss)(params)
        expected = (mean_loss(params), jax.grad(mean_loss)(params), dense @ V, dense)
        assert_trees_close(got, expected)
        matrices.append(dense)
    assert_differ(matrices[0], matrices[1])


# ---------------------------------------------------------------------------------------
# Crashes where jit=False works
# ---------------------------------------------------------------------------------------


def test_closed_over_numpy_bool_mask():
    def make(mask):
        def loss(x):
            return jnp.sum(x[mask] ** 3) + jnp.sum(x[~mask]) ** 2

        return loss

    masks = [np.array([True, False, True]), np.array([False, True, True])]
    references = [check(hvp_call(make(mask))) for mask in masks]
    assert_differ(references[0], references[1])


def test_numpy_function_of_closed_over_numpy_array():
    def make(a):
        def loss(x):
            return jnp.sum(np.exp(a) * x**3)

        return loss

    arrays = [np.array([0.0, 1.0, -1.0]), np.array([2.0, 0.5, 0.0])]
    references = [check(hvp_call(make(a))) for a in arrays]
    assert_differ(references[0], references[1])


@pytest.mark.parametrize("conversion", ["float", "int"])
def test_python_conversion_of_closed_over_jax_array(conversion):
    def make(value):
        def loss(x):
            if conversion == "float":
                threshold = float(value)
                return jnp.sum(jnp.where(x > threshold, x**3, x**2))
            n = int(value)
            return jnp.sum(x**n)

        return loss

    if conversion == "float":
        values = [jnp.asarray(0.0), jnp.asarray(0.5)]
    else:
        values = [jnp.asarray(3), jnp.asarray(4)]
    references = [check(hvp_call(make(value))) for value in values]
    assert_differ(references[0], references[1])


def test_closed_over_numpy_string_array():
    def make(names):
        def loss(x):
            scale = jnp.asarray([2.0 if name == "w" else 1.0 for name in names])
            return jnp.sum(scale * x**3)

        return loss

    name_arrays = [np.array(["w", "b", "w"]), np.array(["b", "b", "w"])]
    references = [check(hvp_call(make(names))) for names in name_arrays]
    assert_differ(references[0], references[1])


# A host callback whose Python function reads a module-level numpy array.
HOST_TABLE = np.array([1.0, 2.0, 3.0])


def host_scale(y):
    y = np.asarray(y)
    return (HOST_TABLE * y).astype(y.dtype)


def loss_with_host_callback(x):
    shape = jax.ShapeDtypeStruct(x.shape, x.dtype)
    c = jax.pure_callback(host_scale, shape, jax.lax.stop_gradient(x))
    return jnp.sum(c * x**3)


def test_pure_callback_reading_module_numpy_array(monkeypatch):
    references = []
    for table in ([1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]):
        monkeypatch.setattr(THIS_MODULE, "HOST_TABLE", np.array(table))
        references.append(check(hvp_call(loss_with_host_callback)))
    assert_differ(references[0], references[1])


# A wrapper with a delegating __getattr__.
class Delegate:
    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)


class Inner:
    def __init__(self, w, b):
        self.w = w
        self.b = b


def test_wrapper_with_delegating_getattr():
    wrapped = Delegate(Inner(A, B))

    def loss(x):
        return jnp.sum(wrapped.w * x**3) + jnp.sum(wrapped.b * x) ** 2

    first = check(hvp_call(loss))
    wrapped._inner.w = C
    second = check(hvp_call(loss))
    wrapped._inner = Inner(B, A)
    third = check(hvp_call(loss))
    assert_differ(first, second)
    assert_differ(second, third)


# Dicts whose keys cannot be sorted: Enum members, mixed int and str.
class Part(enum.Enum):
    WEIGHT = "w"
    BIAS = "b"


@pytest.mark.parametrize("keys", [(Part.WEIGHT, Part.BIAS), (0, "bias")], ids=["enum", "int-str"])
def test_dict_with_unsortable_keys(keys):
    first_key, second_key = keys
    table = {first_key: A, second_key: B}

    def loss(x):
        w, b = table.values()  # insertion order
        return jnp.sum(table[first_key] * w * x**3) + jnp.sum(table[second_key] * b * x) ** 2

    first = check(hvp_call(loss))
    table[first_key] = C  # in place
    second = check(hvp_call(loss))
    assert_differ(first, second)


# A chain of a few hundred plain objects: no RecursionError (uncached with a warning is fine).
class Node:
    def __init__(self, nxt, w=None):
        self.next = nxt
        self.w = w


def test_long_chain_of_plain_objects():
    tail = Node(None, A)
    head = tail
    for _ in range(500):
        head = Node(head)

    def loss(x):
        node = head
        while node.next is not None:
            node = node.next
        return jnp.sum(node.w * x**3)

    first = check(hvp_call(loss))
    tail.w = B
    second = check(hvp_call(loss))
    assert_differ(first, second)


# has_aux with a non-array aux: returned as jit=False returns it (same type, same value).
AUX_ENTRY_POINTS = {
    "hvp": lambda f, jit: jaxhvp.hvp(f, X, V, has_aux=True, jit=jit),
    "vhp": lambda f, jit: jaxhvp.vhp(f, X, V, has_aux=True, jit=jit),
    # value, grad and aux only: products of an operator whose aux is a str fail even with
    # jit=False (the operator, a pytree, goes through jax.jit with the str as a leaf).
    "hessian_operator": lambda f, jit: (lambda op: (op.value, op.grad, op.aux))(
        jaxhvp.hessian_operator(f, X, has_aux=True, jit=jit)
    ),
}


@pytest.mark.parametrize("entry", list(AUX_ENTRY_POINTS))
@pytest.mark.parametrize("auxes", [("first", "second"), (0.5, 0.25)], ids=["str", "float"])
def test_has_aux_with_non_array_aux(entry, auxes):
    def make(aux):
        def loss(x):
            return jnp.sum(x**3), aux

        return loss

    for aux in auxes:
        call = lambda jit: AUX_ENTRY_POINTS[entry](make(aux), jit)  # noqa: E731
        eager, reference = eager_and_reference(call)
        assert type(reference[-1]) is type(aux)  # what jit=False does
        assert type(eager[-1]) is type(reference[-1])
        assert eager[-1] == reference[-1] == aux
        assert_trees_close(eager[:-1], reference[:-1])


# ---------------------------------------------------------------------------------------
# Leaked user state
# ---------------------------------------------------------------------------------------


class SelfCopying:
    def __init__(self, w):
        self.w = w

    def __copy__(self):
        return self

    def loss(self, x):
        return jnp.sum(self.w * x**3)


def test_object_whose_copy_returns_self_holds_no_tracer():
    obj = SelfCopying(A)
    first = check(hvp_call(obj.loss))
    assert obj.w is A  # still the user's array, not a tracer left behind
    obj.w = B
    second = check(hvp_call(obj.loss))
    assert obj.w is B
    assert_differ(first, second)


class Stateful:
    def __init__(self, w):
        self.w = w

    def loss(self, x):
        self.seen = self  # an attribute write lands on whatever `self` is
        return jnp.sum(self.w * x**3)


def test_attribute_writes_land_on_the_users_object():
    reference_model = Stateful(A)
    reference = jaxhvp.hvp(reference_model.loss, X, V, jit=False)
    assert reference_model.seen is reference_model  # what jit=False does

    jaxhvp.cache_clear()  # so that the eager call traces `loss` (side effects run then)
    model = Stateful(A)
    eager = run_eager(lambda jit: jaxhvp.hvp(model.loss, X, V, jit=jit))
    assert_trees_close(eager, reference)
    assert model.__dict__.get("seen") is model  # `self is original` inside the call
    assert model.w is A


# ---------------------------------------------------------------------------------------
# Silently slow: what should be cached is cached
# ---------------------------------------------------------------------------------------


def logistic_loss(w, features, labels, lam):
    logits = features @ w
    return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits) + 0.5 * lam * jnp.sum(w**2)


def test_minimize_with_python_float_in_args_is_cached():
    key1, key2 = jax.random.split(jax.random.key(1))
    features = jax.random.normal(key1, (20, 3))
    labels = (jax.random.uniform(key2, (20,)) > 0.5).astype(jnp.float64)
    w0 = jnp.zeros(3)

    def solve(lam):
        return run_eager(
            lambda jit: jaxhvp.minimize(
                logistic_loss, w0, (features, labels, lam), method="newton-cg"
            )
        )

    jaxhvp.cache_clear()
    results = [solve(0.01)]
    results.append(solve(0.01))
    assert jaxhvp.cache_info().hits >= 1  # the second call reused the first one's kernel
    results.append(solve(0.1))  # traced like jax.jit traces a positional scalar
    info = jaxhvp.cache_info()
    assert info.compilations == 1, info
    assert info.hits >= 2, info

    for lam, result in zip((0.01, 0.01, 0.1), results):
        # the reference: the same solve with the scalar passed as an array
        reference = jaxhvp.minimize(
            logistic_loss, w0, (features, labels, jnp.asarray(lam)), method="newton-cg"
        )
        assert_trees_close(
            (result.x, result.fun, result.jac, result.nit, result.status),
            (reference.x, reference.fun, reference.jac, reference.nit, reference.status),
        )
        assert bool(result.success)
    assert_differ(results[0].x, results[2].x)


def test_closed_over_nan_compiles_once():
    def make(c):
        def loss(x):
            return jnp.nan_to_num(c, nan=2.0) * jnp.sum(x**3)

        return loss

    jaxhvp.cache_clear()
    eager = [run_eager(hvp_call(make(float("nan")))) for _ in range(3)]  # three NaN objects
    info = jaxhvp.cache_info()
    assert info.compilations == 1, info
    assert info.hits == 2, info
    reference = jaxhvp.hvp(make(float("nan")), X, V, jit=False)
    for result in eager:
        assert_trees_close(result, reference)
    assert np.isfinite(np.asarray(reference[1])).all()


# ---------------------------------------------------------------------------------------
# On every path: results never depend on the caller's buffers after the call returns
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "nojit"])
def test_large_closed_over_buffer_reused_after_the_call(jit):
    n = 2_000_000
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(n))
    v = jnp.asarray(rng.standard_normal(n))
    buf = rng.standard_normal(n)

    def make(data):
        def loss(y):
            return jnp.sum(data * y**3)

        return loss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = jaxhvp.hvp(make(buf.copy()), x, v, jit=jit)  # computed beforehand on a copy
        jax.block_until_ready(expected)
        original = buf.copy()
        for _ in range(4):  # a race: several rounds make a failure (if any) likely
            result = jaxhvp.hvp(make(buf), x, v, jit=jit)
            buf[:] = 0.0  # the next batch goes into the same buffer, right after the call
            assert_trees_close(result, expected)
            buf[:] = original


# A user module's attributes (``import config; config.W``): read afresh, as with jit=False.
user_config = types.ModuleType("user_config")
user_config.W, user_config.SCALE = A, 2.0


def _module_helper(x):
    return jnp.sum(user_config.W * x**3)


user_config.helper = _module_helper


def loss_reading_a_module(x):
    return user_config.SCALE * jnp.sum(user_config.W * jnp.sin(x)) + user_config.helper(x)


def test_user_module_attributes_are_read_at_every_call(monkeypatch):
    answers = []
    for w, scale in ((A, 2.0), (B, 2.0), (B, 3.0)):
        monkeypatch.setattr(user_config, "W", w)
        monkeypatch.setattr(user_config, "SCALE", scale)
        answers.append(check(hvp_call(loss_reading_a_module)))
    assert_differ(answers[0], answers[1])
    assert_differ(answers[1], answers[2])
