"""The inputs rule, v, outputs and create_graph: torch's semantics over JAX pytrees."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from conftest import assert_trees_close

import jaxhvp

PRODUCTS = [jaxhvp.hvp, jaxhvp.vhp]


def quartic(x):
    """f(x) = sum(x^4) / 4, whose Hessian is diag(3 x^2)."""
    return (x**4).sum() / 4


class Params(NamedTuple):
    w: jax.Array
    b: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Layer:
    w: jax.Array
    b: jax.Array


def _pytree_cases():
    w, b = jnp.arange(1.0, 7.0).reshape(2, 3), jnp.array([0.5, -1.0, 2.0])
    return {
        "dict": {"w": w, "b": b},
        "nested dict and list": {"layer": [w, {"b": b}]},
        "list": [w, b],
        "NamedTuple": Params(w, b),
        "dataclass": Layer(w, b),
    }


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("case", sorted(_pytree_cases()))
@pytest.mark.filterwarnings("ignore:jaxhvp runs f .*changes objects it reads")  # seen.append
def test_pytree_inputs_are_one_argument_and_keep_their_structure(product, case):
    inputs = _pytree_cases()[case]
    seen = []

    def f(tree):
        seen.append(jax.tree_util.tree_structure(tree))
        return sum(quartic(x) for x in jax.tree_util.tree_leaves(tree))

    v = jax.tree_util.tree_map(lambda x: jnp.full_like(x, 2.0), inputs)
    out, prod = product(f, inputs, v)
    assert seen[0] == jax.tree_util.tree_structure(inputs)
    expected = jax.tree_util.tree_map(lambda x, t: 3 * x**2 * t, inputs, v)
    assert_trees_close(prod, expected)
    assert_trees_close(out, f(inputs))


@pytest.mark.parametrize("product", PRODUCTS)
def test_tuple_inputs_are_unpacked(product):
    x, y = jnp.array([1.0, 2.0]), jnp.array([3.0])
    _, (hx, hy) = product(lambda a, b: quartic(a) + quartic(b), (x, y), (x, y))
    assert_trees_close((hx, hy), (3 * x**3, 3 * y**3))


@pytest.mark.parametrize("product", PRODUCTS)
def test_one_tuple_stays_a_tuple(product):
    x = jnp.array([1.0, 2.0])
    _, prod = product(quartic, (x,), (x,))
    assert type(prod) is tuple
    assert len(prod) == 1


@pytest.mark.parametrize("product", PRODUCTS)
def test_single_array_gives_single_array_and_accepts_one_tuple_v(product):
    x = jnp.array([1.0, 2.0])
    _, from_array = product(quartic, x, x)
    _, from_tuple = product(quartic, x, (x,))
    assert isinstance(from_array, jax.Array)
    assert_trees_close(from_array, from_tuple)


@pytest.mark.parametrize("product", PRODUCTS)
@pytest.mark.parametrize("inputs", [jnp.array(2.0), jnp.array([[2.0]]), (jnp.array([2.0]),)])
def test_v_none_is_ones_for_a_single_element(product, inputs):
    _, prod = product(quartic, inputs)
    expected = jax.tree_util.tree_map(lambda x: 3 * x**2, inputs)
    assert_trees_close(prod, expected)


@pytest.mark.parametrize("product", PRODUCTS)
def test_output_is_returned_as_func_returned_it(product):
    x = jnp.array([1.0, 2.0])
    out, prod = product(lambda x: quartic(x).reshape(1, 1, 1), x, x)
    assert out.shape == (1, 1, 1)
    assert_trees_close(out, quartic(x).reshape(1, 1, 1))
    assert_trees_close(prod, 3 * x**3)


@pytest.mark.parametrize("product", PRODUCTS)
def test_integer_output_is_a_constant_with_zero_hessian(product):
    x = jnp.array([1.5, 2.5])
    out, prod = product(lambda x: (x**2).sum().astype(jnp.int32), x, x)
    assert out.dtype == jnp.int32
    assert_trees_close(prod, jnp.zeros(2))


@pytest.mark.parametrize("product", PRODUCTS)
def test_numpy_inputs_are_accepted(product):
    x = np.array([1.0, 2.0])
    _, prod = product(quartic, x, np.ones(2))
    assert isinstance(prod, jax.Array)
    assert_trees_close(prod, jnp.array([3.0, 12.0]))


@pytest.mark.parametrize("product", PRODUCTS)
def test_none_leaves_inside_a_pytree_are_structure(product):
    params = {"w": jnp.array([1.0, 2.0]), "b": None}
    _, prod = product(lambda p: quartic(p["w"]), params, {"w": jnp.ones(2), "b": None})
    assert prod["b"] is None
    assert_trees_close(prod["w"], 3 * params["w"] ** 2)


@pytest.mark.parametrize("product", PRODUCTS)
def test_mixed_dtypes_keep_their_dtypes(product):
    inputs = (jnp.array([1.0, 2.0], jnp.float32), jnp.array([3.0], jnp.float64))
    _, (a, b) = product(lambda x, y: quartic(x) + quartic(y), inputs, inputs)
    assert a.dtype == jnp.float32
    assert b.dtype == jnp.float64


@pytest.mark.parametrize("product", PRODUCTS)
def test_bfloat16_runs(product):
    x = jnp.array([1.0, 2.0], jnp.bfloat16)
    _, prod = product(quartic, x, x)
    assert prod.dtype == jnp.bfloat16
    assert_trees_close(prod, 3 * x**3)


# --- create_graph -----------------------------------------------------------------------------


@pytest.mark.parametrize("product", PRODUCTS)
def test_without_create_graph_results_are_detached(product):
    v = jnp.array([1.0, -1.0])

    def through(x):
        out, prod = product(quartic, x, v)
        return out + prod.sum()

    assert_trees_close(jax.grad(through)(jnp.array([1.0, 2.0])), jnp.zeros(2))


@pytest.mark.parametrize("product", PRODUCTS)
def test_with_create_graph_results_are_differentiable(product):
    v = jnp.array([1.0, -1.0])

    def through(x):
        out, prod = product(quartic, x, v, create_graph=True)
        return out + prod.sum()

    x = jnp.array([1.0, 2.0])
    # d/dx [sum x^4/4 + sum 3 x^2 v] = x^3 + 6 x v
    assert_trees_close(jax.grad(through)(x), x**3 + 6 * x * v)
    jax.test_util.check_grads(through, (x,), order=2, modes=["fwd", "rev"])


def test_hessian_create_graph():
    def trace_of_hessian(x, create_graph):
        return jnp.trace(jaxhvp.hessian(quartic, x, create_graph=create_graph))

    x = jnp.array([1.0, 2.0])
    assert_trees_close(jax.grad(trace_of_hessian)(x, True), 6 * x)
    assert_trees_close(jax.grad(trace_of_hessian)(x, False), jnp.zeros(2))


# --- hessian's structure ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(vectorize=True),
        dict(vectorize=True, outer_jacobian_strategy="forward-mode"),
    ],
)
def test_hessian_structure_matches_jax_hessian(options):
    x, y = jnp.arange(1.0, 7.0).reshape(2, 3), jnp.array([0.5, 2.0])

    def f(x, y):
        return (jnp.sin(x) * (x @ jnp.ones(3))[:, None]).sum() * (y**2).sum()

    ours = jaxhvp.hessian(f, (x, y), **options)
    assert_trees_close(ours, jax.hessian(f, argnums=(0, 1))(x, y))
    tree = {"x": x, "y": [y]}
    ours_tree = jaxhvp.hessian(lambda t: f(t["x"], t["y"][0]), tree, **options)
    assert_trees_close(ours_tree, jax.hessian(lambda t: f(t["x"], t["y"][0]))(tree))
    ours_single = jaxhvp.hessian(lambda x: f(x, y), x, **options)
    assert ours_single.shape == (2, 3, 2, 3)
    assert_trees_close(ours_single, jax.hessian(lambda x: f(x, y))(x))
