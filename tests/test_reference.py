"""jaxhvp against independent references: torch.autograd.functional, jax.hessian, finite
differences and closed-form Hessians. Nothing here compares jaxhvp with itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.autograd.functional as taf
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp

# --- fixed data for the model losses (numpy, so nothing is a float64 jax array at import) ----

_DATA = np.random.default_rng(0)
CE_X = _DATA.standard_normal((6, 4))  # 6 samples, 4 features
CE_Y = np.eye(3)[_DATA.integers(0, 3, size=6)]  # one-hot labels over 3 classes
MLP_X = _DATA.standard_normal((5, 3))
MLP_T = _DATA.standard_normal(5)


# --- the catalogue: every function twice, in JAX and in torch ---------------------------------


def jax_pow_reducer(x):
    return (x**3).sum()


def torch_pow_reducer(x):
    return (x**3).sum()


def jax_pow_adder_reducer(x, y):
    return (2 * x**2 + 3 * y**2).sum()


def torch_pow_adder_reducer(x, y):
    return (2 * x**2 + 3 * y**2).sum()


def jax_rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def torch_rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def jax_cross_entropy(w, b):
    """Mean softmax cross-entropy of a linear model ``X W^T + b``."""
    logits = jnp.asarray(CE_X, w.dtype) @ w.T + b
    picked = (jnp.asarray(CE_Y, w.dtype) * logits).sum(axis=1)
    return (jax.nn.logsumexp(logits, axis=1) - picked).mean()


def torch_cross_entropy(w, b):
    logits = torch.as_tensor(CE_X, dtype=w.dtype) @ w.T + b
    picked = (torch.as_tensor(CE_Y, dtype=w.dtype) * logits).sum(dim=1)
    return (torch.logsumexp(logits, dim=1) - picked).mean()


def jax_mlp_loss(params):
    """Squared error of a one-hidden-layer tanh network; params is a dict."""
    hidden = jnp.tanh(jnp.asarray(MLP_X, params["W1"].dtype) @ params["W1"].T + params["b1"])
    return ((hidden @ params["w2"] - jnp.asarray(MLP_T, params["w2"].dtype)) ** 2).mean()


def torch_mlp_loss(W1, b1, w2):  # the dict's leaves, sorted by key as jax orders them
    hidden = torch.tanh(torch.as_tensor(MLP_X, dtype=W1.dtype) @ W1.T + b1)
    return ((hidden @ w2 - torch.as_tensor(MLP_T, dtype=w2.dtype)) ** 2).mean()


def jax_boxed_output(x):
    """A one-element output of shape (1, 1, 1)."""
    return (jnp.exp(x / 2) * x).sum(axis=-1, keepdims=True)


def torch_boxed_output(x):
    return (torch.exp(x / 2) * x).sum(dim=-1, keepdim=True)


@dataclasses.dataclass(frozen=True)
class Case:
    """One test function in both frameworks, and float64 numpy inputs for it."""

    name: str
    jax_fn: Callable
    torch_fn: Callable
    make_inputs: Callable[[np.random.Generator], Any]  # an array, a tuple, or a dict


CASES = [
    Case("pow_reducer", jax_pow_reducer, torch_pow_reducer, lambda r: r.standard_normal((2, 3))),
    Case(
        "pow_adder_reducer",
        jax_pow_adder_reducer,
        torch_pow_adder_reducer,
        lambda r: (r.standard_normal(2), r.standard_normal(2)),
    ),
    Case("rosenbrock", jax_rosenbrock, torch_rosenbrock, lambda r: r.uniform(-1.5, 1.5, 5)),
    Case(
        "cross_entropy",
        jax_cross_entropy,
        torch_cross_entropy,
        lambda r: (r.standard_normal((3, 4)), r.standard_normal(3)),
    ),
    Case(
        "mlp_dict",
        jax_mlp_loss,
        torch_mlp_loss,
        lambda r: {
            "W1": r.standard_normal((4, 3)),
            "b1": r.standard_normal(4),
            "w2": r.standard_normal(4),
        },
    ),
    Case(
        "boxed_output",
        jax_boxed_output,
        torch_boxed_output,
        lambda r: r.standard_normal((1, 1, 3)),
    ),
]
CASE_IDS = [c.name for c in CASES]

# (vectorize, outer_jacobian_strategy): every combination torch and jaxhvp accept.
HESSIAN_MODES = [(False, "reverse-mode"), (True, "reverse-mode"), (True, "forward-mode")]


# --- helpers ------------------------------------------------------------------------------


def case_data(case: Case, dtype=np.float64) -> tuple[Any, Any]:
    """Reproducible numpy ``(inputs, v)`` of the given dtype for one case."""
    rng = np.random.default_rng(sum(map(ord, case.name)))
    inputs = case.make_inputs(rng)
    v = jax.tree_util.tree_map(lambda a: rng.standard_normal(a.shape), inputs)
    cast = lambda t: jax.tree_util.tree_map(lambda a: a.astype(dtype), t)  # noqa: E731
    return cast(inputs), cast(v)


def to_jax(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.asarray, tree)


def to_torch(tree: Any) -> Any:
    """An array stays one tensor; a tuple or dict becomes a tuple of its leaves, in order."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree.copy())
    return tuple(torch.from_numpy(a.copy()) for a in jax.tree_util.tree_leaves(tree))


def t_dtype(dtype) -> torch.dtype:
    """The torch dtype of a numpy float dtype."""
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[
        np.dtype(dtype)
    ]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()


def torch_product_as(result: Any, inputs: Any) -> Any:
    """torch's product (a tensor or a tuple) rearranged into the structure of ``inputs``."""
    if isinstance(result, torch.Tensor):
        return to_numpy(result)
    treedef = jax.tree_util.tree_structure(inputs)
    return treedef.unflatten([to_numpy(t) for t in result])


def torch_hessian_as(result: Any, inputs: Any) -> Any:
    """torch's Hessian (a tensor or tuple of tuples) nested as jaxhvp nests blocks."""
    if isinstance(result, torch.Tensor):
        return to_numpy(result)
    treedef = jax.tree_util.tree_structure(inputs)
    return treedef.unflatten([torch_product_as(row, inputs) for row in result])


def call(fn: Callable, inputs: Any) -> Any:
    """``fn`` called with jaxhvp's inputs rule."""
    return fn(*inputs) if type(inputs) is tuple else fn(inputs)


def scalar(fn: Callable) -> Callable:
    return lambda inputs: call(fn, inputs).reshape(())


def dense_hvp(fn: Callable, inputs: Any, v: Any) -> Any:
    """H v from jax.hessian of the flattened function."""
    flat, unravel = ravel_pytree(inputs)
    dense = jax.jit(jax.hessian(lambda z: scalar(fn)(unravel(z))))(flat)
    return unravel(dense @ ravel_pytree(v)[0])


def finite_difference_hvp(fn: Callable, inputs: Any, v: Any, eps: float = 1e-5) -> Any:
    """Central differences of the gradient along v."""
    grad = jax.grad(scalar(fn))
    step = lambda s: jax.tree_util.tree_map(lambda x, d: x + s * eps * d, inputs, v)  # noqa: E731
    return jax.tree_util.tree_map(
        lambda a, b: (a - b) / (2 * eps), grad(step(1.0)), grad(step(-1.0))
    )


# --- against torch.autograd.functional ----------------------------------------------------


@pytest.mark.parametrize("name", ["hvp", "vhp"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_product_matches_torch(case, name, dtype):
    """hvp / vhp and func_output equal torch's on the same values."""
    inputs, v = case_data(case, dtype)
    out, prod = getattr(jaxhvp, name)(case.jax_fn, to_jax(inputs), to_jax(v))
    t_out, t_prod = getattr(taf, name)(case.torch_fn, to_torch(inputs), to_torch(v))
    assert_trees_close(out, to_numpy(t_out))
    assert_trees_close(prod, torch_product_as(t_prod, inputs))


# torch's forward-mode AD loads its jvp decompositions with torch.jit.script, which warns.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(("vectorize", "strategy"), HESSIAN_MODES)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hessian_matches_torch(case, vectorize, strategy, dtype):
    """The dense Hessian, block by block, in every mode torch supports."""
    inputs, _ = case_data(case, dtype)
    h = jaxhvp.hessian(
        case.jax_fn, to_jax(inputs), vectorize=vectorize, outer_jacobian_strategy=strategy
    )
    t_h = taf.hessian(
        case.torch_fn, to_torch(inputs), vectorize=vectorize, outer_jacobian_strategy=strategy
    )
    assert_trees_close(h, torch_hessian_as(t_h, inputs))


def test_tuple_hessian_is_tuple_of_tuples():
    """A tuple input gives torch's nesting: a tuple of tuples of blocks."""
    x, y = np.arange(2.0), np.arange(3.0)
    fn = lambda a, b: (a.sum() * b**2).sum()  # noqa: E731
    h = jaxhvp.hessian(fn, (jnp.asarray(x), jnp.asarray(y)))
    t_h = taf.hessian(fn, (torch.from_numpy(x), torch.from_numpy(y)))
    assert type(h) is tuple and all(type(row) is tuple for row in h)
    assert [[b.shape for b in row] for row in h] == [[(2, 2), (2, 3)], [(3, 2), (3, 3)]]
    assert_trees_close(h, tuple(tuple(to_numpy(b) for b in row) for row in t_h))


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_v_none_single_element_matches_torch(name):
    """v=None on a one-element input means v = ones, as in torch."""
    x = np.array([0.7])
    out, prod = getattr(jaxhvp, name)(lambda a: (jnp.exp(a) * jnp.sin(a)).sum(), jnp.asarray(x))
    t_out, t_prod = getattr(taf, name)(
        lambda a: (torch.exp(a) * torch.sin(a)).sum(), torch.from_numpy(x)
    )
    assert_trees_close(out, to_numpy(t_out))
    assert_trees_close(prod, to_numpy(t_prod))


# --- against jax.hessian and finite differences ----------------------------------------------


@pytest.mark.parametrize("name", ["hvp", "vhp"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_product_matches_dense_jax_hessian(case, name):
    """The product equals jax.hessian of the raveled function times raveled v."""
    inputs, v = map(to_jax, case_data(case))
    _, prod = getattr(jaxhvp, name)(case.jax_fn, inputs, v)
    assert_trees_close(prod, dense_hvp(case.jax_fn, inputs, v))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hvp_matches_finite_differences(case):
    """Central differences of jax.grad along v, in float64."""
    inputs, v = map(to_jax, case_data(case))
    _, prod = jaxhvp.hvp(case.jax_fn, inputs, v)
    assert_trees_close(prod, finite_difference_hvp(case.jax_fn, inputs, v), rtol=1e-6, atol=1e-6)


# --- against closed forms -----------------------------------------------------------------


def quadratic_data():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((4, 4))  # not symmetric: the Hessian is its symmetric part
    return a, rng.standard_normal(4), rng.standard_normal(4), rng.standard_normal(4)


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_quadratic_product_is_symmetric_part_times_v(name):
    """f = x^T A x / 2 + b^T x has Hessian (A + A^T) / 2, whatever x."""
    a, b, x, v = quadratic_data()
    fn = lambda z: 0.5 * z @ jnp.asarray(a) @ z + jnp.asarray(b) @ z  # noqa: E731
    out, prod = getattr(jaxhvp, name)(fn, jnp.asarray(x), jnp.asarray(v))
    assert_trees_close(out, np.asarray(0.5 * x @ a @ x + b @ x))
    assert_trees_close(prod, 0.5 * (a + a.T) @ v)


@pytest.mark.parametrize(("vectorize", "strategy"), HESSIAN_MODES)
def test_quadratic_hessian(vectorize, strategy):
    a, b, x, _ = quadratic_data()
    fn = lambda z: 0.5 * z @ jnp.asarray(a) @ z + jnp.asarray(b) @ z  # noqa: E731
    h = jaxhvp.hessian(fn, jnp.asarray(x), vectorize=vectorize, outer_jacobian_strategy=strategy)
    assert_trees_close(h, 0.5 * (a + a.T))


def logistic_data():
    rng = np.random.default_rng(2)
    m, d = 8, 3
    x = rng.standard_normal((m, d))
    y = rng.choice([-1.0, 1.0], size=m)
    return x, y, rng.standard_normal(d), rng.standard_normal(d), 0.3


def logistic_loss(x, y, lam):
    """Mean logistic loss with labels in {-1, 1} plus an L2 penalty lam / 2 |w|^2."""
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    return lambda w: jnp.logaddexp(0.0, -yj * (xj @ w)).mean() + 0.5 * lam * w @ w


def logistic_hessian(x, w, lam):
    """X^T diag(p (1 - p)) X / m + lam I, with p = sigmoid(X w)."""
    p = 1 / (1 + np.exp(-(x @ w)))
    return x.T @ (x * (p * (1 - p))[:, None]) / len(x) + lam * np.eye(x.shape[1])


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_logistic_regression_product(name):
    x, y, w, v, lam = logistic_data()
    _, prod = getattr(jaxhvp, name)(logistic_loss(x, y, lam), jnp.asarray(w), jnp.asarray(v))
    assert_trees_close(prod, logistic_hessian(x, w, lam) @ v)


def test_logistic_regression_hessian():
    x, y, w, _, lam = logistic_data()
    h = jaxhvp.hessian(logistic_loss(x, y, lam), jnp.asarray(w))
    assert_trees_close(h, logistic_hessian(x, w, lam))


# --- the seed examples --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_seed_pow_reducer(name, dtype):
    """(x^3).sum() on [[1, 2], [3, 4]] with v = ones: output 100, product 6 x."""
    x = np.array([[1.0, 2.0], [3.0, 4.0]], dtype)
    out, prod = getattr(jaxhvp, name)(jax_pow_reducer, jnp.asarray(x), jnp.ones((2, 2), dtype))
    assert_trees_close(out, np.asarray(100.0, dtype))
    assert_trees_close(prod, np.array([[6.0, 12.0], [18.0, 24.0]], dtype))
    t_out, t_prod = getattr(taf, name)(
        torch_pow_reducer, torch.from_numpy(x), torch.ones((2, 2), dtype=t_dtype(dtype))
    )
    assert_trees_close(out, to_numpy(t_out))
    assert_trees_close(prod, to_numpy(t_prod))


@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_seed_pow_adder_reducer(name, dtype):
    """(2 x^2 + 3 y^2).sum() with v = (zeros, ones) gives ((0, 0), (6, 6))."""
    x, y = np.array([1.0, 2.0], dtype), np.array([3.0, 4.0], dtype)
    v = (np.zeros(2, dtype), np.ones(2, dtype))
    out, prod = getattr(jaxhvp, name)(jax_pow_adder_reducer, to_jax((x, y)), to_jax(v))
    assert_trees_close(out, np.asarray(85.0, dtype))
    assert_trees_close(prod, (np.zeros(2, dtype), np.full(2, 6.0, dtype)))
    _, t_prod = getattr(taf, name)(torch_pow_adder_reducer, to_torch((x, y)), to_torch(v))
    assert_trees_close(prod, torch_product_as(t_prod, (x, y)))


# --- bfloat16: runs, keeps its dtype, and is roughly right --------------------------------

BF16_CASES = [c for c in CASES if c.name in ("pow_reducer", "pow_adder_reducer", "mlp_dict")]


@pytest.mark.parametrize("name", ["hvp", "vhp"])
@pytest.mark.parametrize("case", BF16_CASES, ids=[c.name for c in BF16_CASES])
def test_bfloat16_roughly_matches_torch(case, name):
    """bfloat16 inputs give bfloat16 results within 5% of torch's float64 product."""
    inputs, v = case_data(case)
    bf16 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), t)  # noqa: E731
    out, prod = getattr(jaxhvp, name)(case.jax_fn, bf16(inputs), bf16(v))
    _, t_prod = getattr(taf, name)(case.torch_fn, to_torch(inputs), to_torch(v))
    assert out.dtype == jnp.bfloat16
    assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree_util.tree_leaves(prod))
    expected = torch_product_as(t_prod, inputs)
    scale = max(np.abs(e).max() for e in jax.tree_util.tree_leaves(expected))
    as_f32 = lambda t: jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), t)  # noqa: E731
    assert_trees_close(as_f32(prod), as_f32(expected), rtol=5e-2, atol=5e-2 * scale)
