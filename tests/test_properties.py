"""Hypothesis properties of Hessian products: linearity in v, symmetry of H, and agreement
of hvp, vhp and the dense Hessian, for single arrays, tuples and dicts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from conftest import assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jaxhvp

SETTINGS = settings(max_examples=25, deadline=None)
TOL = dict(rtol=1e-9, atol=1e-8)  # float64, with room for cancellation in sums of terms

bounded = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False)


def arrays_like(shapes) -> st.SearchStrategy:
    """A tuple of float64 numpy arrays of the given shapes, entries in [-3, 3]."""
    return st.tuples(*[hnp.arrays(np.float64, s, elements=bounded) for s in shapes])


@st.composite
def vectors(draw, count: int):
    """``count`` vectors of one common length n in 1..5: a point and directions."""
    n = draw(st.integers(1, 5))
    return draw(arrays_like([(n,)] * count))


@st.composite
def tuple_points(draw, count: int):
    """``count`` tuples ``(x, m)`` with x of shape (n,) and m of shape (k, n)."""
    n, k = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    return [draw(arrays_like([(n,), (k, n)])) for _ in range(count)]


@st.composite
def dict_points(draw, count: int):
    """``count`` dicts ``{"w": (h, 3), "b": (h,)}`` of MLP parameters or directions."""
    h = draw(st.integers(1, 3))
    return [dict(zip(("w", "b"), draw(arrays_like([(h, 3), (h,)])))) for _ in range(count)]


# --- smooth test functions ----------------------------------------------------------------


def smooth(x):
    """Non-separable: sin(x) x^2 summed, plus a quartic coupling every entry."""
    return (jnp.sin(x) * x**2).sum() + (x @ x) ** 2 / 10


def coupled(x, m):
    """Tuple inputs of different shapes: x (n,), m (k, n)."""
    return smooth(x) + jnp.tanh(m @ x).sum() + (jnp.cos(m) * m).sum() / 3


MLP_DATA = np.linspace(-1.0, 1.0, 6).reshape(2, 3)  # 2 samples, 3 features


def mlp(params):
    """Tanh MLP on fixed data; params is a dict {"w": (h, 3), "b": (h,)}."""
    hidden = jnp.tanh(jnp.asarray(MLP_DATA) @ params["w"].T + params["b"])
    return (hidden.sum(axis=1) ** 2).sum() + (params["b"] ** 2).sum() / 2


# --- helpers ------------------------------------------------------------------------------


def tree(x):
    return jax.tree_util.tree_map(jnp.asarray, x)


def combine(a, u, b, w):
    """a u + b w, leaf by leaf."""
    return jax.tree_util.tree_map(lambda p, q: a * p + b * q, u, w)


def vdot(u, w) -> float:
    """The Euclidean inner product over all leaves."""
    leaves = zip(jax.tree_util.tree_leaves(u), jax.tree_util.tree_leaves(w))
    return float(sum(jnp.vdot(p, q) for p, q in leaves))


def contract(h, v):
    """The dense Hessian (jaxhvp's nesting: array, tuple of tuples, or dict of dicts) times v."""
    if isinstance(v, jax.Array):
        return jnp.tensordot(h, v, axes=v.ndim)
    keys = range(len(v)) if isinstance(v, tuple) else v.keys()
    products = {i: sum(jnp.tensordot(h[i][j], v[j], axes=v[j].ndim) for j in keys) for i in keys}
    return tuple(products.values()) if isinstance(v, tuple) else products


# --- linearity and symmetry ---------------------------------------------------------------


@SETTINGS
@given(vectors(3), bounded, bounded)
def test_hvp_is_linear_in_v(xuw, a, b):
    """H (a u + b w) = a H u + b H w."""
    x, u, w = map(jnp.asarray, xuw)
    _, combined = jaxhvp.hvp(smooth, x, combine(a, u, b, w))
    _, hu = jaxhvp.hvp(smooth, x, u)
    _, hw = jaxhvp.hvp(smooth, x, w)
    assert_trees_close(combined, combine(a, hu, b, hw), **TOL)


@SETTINGS
@given(vectors(3))
def test_hessian_is_symmetric(xuw):
    """<u, H w> = <H u, w>."""
    x, u, w = map(jnp.asarray, xuw)
    _, hu = jaxhvp.hvp(smooth, x, u)
    _, hw = jaxhvp.hvp(smooth, x, w)
    np.testing.assert_allclose(vdot(u, hw), vdot(hu, w), **TOL)


@SETTINGS
@given(tuple_points(3))
def test_tuple_hessian_is_symmetric(points):
    """<u, H w> = <H u, w> across the blocks of a tuple input, by vhp as well."""
    x, u, w = map(tree, points)
    _, hu = jaxhvp.hvp(coupled, x, u)
    _, hw = jaxhvp.vhp(coupled, x, w)
    np.testing.assert_allclose(vdot(u, hw), vdot(hu, w), **TOL)


@SETTINGS
@given(dict_points(3), bounded, bounded)
def test_dict_linearity_and_symmetry(points, a, b):
    """Linearity in v and <u, H w> = <H u, w> over a dict of two arrays."""
    params, u, w = map(tree, points)
    _, hu = jaxhvp.hvp(mlp, params, u)
    _, hw = jaxhvp.hvp(mlp, params, w)
    _, combined = jaxhvp.hvp(mlp, params, combine(a, u, b, w))
    assert_trees_close(combined, combine(a, hu, b, hw), **TOL)
    np.testing.assert_allclose(vdot(u, hw), vdot(hu, w), **TOL)


# --- hvp == vhp == dense Hessian contracted with v ----------------------------------------

HESSIAN_MODES = [(False, "reverse-mode"), (True, "reverse-mode"), (True, "forward-mode")]
modes = st.sampled_from(HESSIAN_MODES)  # one mode per example keeps compilations few


def assert_products_agree(func, x, v, mode):
    """hvp, vhp and the dense Hessian in one mode give the same product and output."""
    out_h, hv = jaxhvp.hvp(func, x, v)
    out_v, vh = jaxhvp.vhp(func, x, v)
    assert_trees_close(out_v, out_h)
    assert_trees_close(vh, hv, **TOL)
    vectorize, strategy = mode
    h = jaxhvp.hessian(func, x, vectorize=vectorize, outer_jacobian_strategy=strategy)
    assert_trees_close(contract(h, v), hv, **TOL)


@SETTINGS
@given(vectors(2), modes)
def test_products_agree_single_array(points, mode):
    x, v = map(jnp.asarray, points)
    assert_products_agree(smooth, x, v, mode)


@SETTINGS
@given(tuple_points(2), modes)
def test_products_agree_tuple(points, mode):
    x, v = map(tree, points)
    assert_products_agree(coupled, x, v, mode)


@SETTINGS
@given(dict_points(2), modes)
def test_products_agree_dict(points, mode):
    x, v = map(tree, points)
    assert_products_agree(mlp, x, v, mode)


# --- GGN, Fisher and empirical Fisher: symmetric, positive semi-definite, linear ---------

_X = np.linspace(-1.0, 1.0, 12).reshape(4, 3)
_Y = np.array([0, 2, 1, 2])


def _net(p):
    return jnp.tanh(_X @ p["w"].T + p["b"]) @ jnp.ones((p["b"].size, 3))


def _per_example(out):
    return -jnp.take_along_axis(jax.nn.log_softmax(out), _Y[:, None], axis=1)[:, 0]


def _curvatures(p):
    return (
        jaxhvp.ggn_operator(_net, lambda out: _per_example(out).mean(), p),
        jaxhvp.fisher_operator(_net, p, likelihood="bernoulli"),
        jaxhvp.fisher_operator(
            _net, p, likelihood="categorical", mc_samples=3, key=jax.random.key(0)
        ),
        jaxhvp.empirical_fisher_operator(_net, _per_example, p),
    )


@SETTINGS
@given(dict_points(3), st.floats(-2.0, 2.0))
def test_output_space_curvatures_are_symmetric_psd_and_linear(points, a):
    p, u, v = (jax.tree_util.tree_map(jnp.asarray, t) for t in points)
    combined = jax.tree_util.tree_map(lambda x, y: a * x + y, u, v)
    for op in _curvatures(p):
        gu, gv = op @ u, op @ v
        assert op.psd
        np.testing.assert_allclose(_dot(u, gv), _dot(gu, v), **TOL)
        assert _dot(v, gv) >= -1e-10 * (1 + abs(_dot(v, v)))
        expected = jax.tree_util.tree_map(lambda x, y: a * x + y, gu, gv)
        assert_trees_close(op @ combined, expected, **TOL)


def _dot(a, b):
    return float(
        sum(
            jnp.vdot(x, y)
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
        )
    )
