"""hvp, vhp and hessian inside the user's jax.jit, vmap, grad and lax loops."""

import jax
import jax.numpy as jnp
import pytest
from conftest import assert_trees_close
from jax import lax

import jaxhvp

PRODUCTS = [jaxhvp.hvp, jaxhvp.vhp]


def loss(params, data):
    """A tiny tanh regression; params is a dict, data closes over nothing."""
    x, y = data
    pred = jnp.tanh(x @ params["w"] + params["b"])
    return ((pred - y) ** 2).mean()


def _problem(key=0):
    keys = jax.random.split(jax.random.PRNGKey(key), 5)
    params = {"w": jax.random.normal(keys[0], (3, 2)), "b": jax.random.normal(keys[1], (2,))}
    data = (jax.random.normal(keys[2], (8, 3)), jax.random.normal(keys[3], (8, 2)))
    v = jax.tree_util.tree_map(lambda p: jax.random.normal(keys[4], p.shape), params)
    return params, data, v


def _reference_hvp(params, data, v):
    return jax.jvp(jax.grad(lambda p: loss(p, data)), (params,), (v,))[1]


@pytest.mark.parametrize("product", PRODUCTS)
def test_inside_jit_with_closure_over_traced_data(product):
    params, data, v = _problem()

    @jax.jit
    def step(params, data, v):
        return product(lambda p: loss(p, data), params, v)[1]

    assert_trees_close(step(params, data, v), _reference_hvp(params, data, v))


@pytest.mark.parametrize("product", PRODUCTS)
def test_vmap_over_v(product):
    params, data, v = _problem()
    vs = jax.tree_util.tree_map(lambda x: jnp.stack([x, 2 * x, -x]), v)
    batched = jax.vmap(lambda v: product(lambda p: loss(p, data), params, v)[1])(vs)
    expected = jax.vmap(lambda v: _reference_hvp(params, data, v))(vs)
    assert_trees_close(batched, expected)


@pytest.mark.parametrize("product", PRODUCTS)
def test_vmap_over_inputs_and_data(product):
    problems = [_problem(k) for k in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *problems)
    params, data, v = stacked
    out = jax.vmap(lambda p, d, v: product(lambda q: loss(q, d), p, v))(params, data, v)
    expected_hvp = jax.vmap(_reference_hvp)(params, data, v)
    assert_trees_close(out[1], expected_hvp)
    assert_trees_close(out[0], jax.vmap(loss)(params, data))


@pytest.mark.parametrize("product", PRODUCTS)
def test_grad_of_a_function_using_hvp_with_create_graph(product):
    params, data, v = _problem()

    def curvature(params):  # v^T H(params) v, differentiated once more
        prod = product(lambda p: loss(p, data), params, v, create_graph=True)[1]
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(prod), jax.tree.leaves(v)))

    def reference(params):
        prod = _reference_hvp(params, data, v)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(prod), jax.tree.leaves(v)))

    assert_trees_close(jax.grad(curvature)(params), jax.grad(reference)(params))


@pytest.mark.parametrize("product", PRODUCTS)
def test_in_fori_loop_power_iteration(product):
    params, data, v = _problem()

    def normalise(t):
        norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(t)))
        return jax.tree.map(lambda x: x / norm, t)

    def body(step, u, prod):
        return normalise(prod(u))

    ours = lax.fori_loop(
        0, 5, lambda i, u: body(i, u, lambda u: product(lambda p: loss(p, data), params, u)[1]), v
    )
    expected = lax.fori_loop(
        0, 5, lambda i, u: body(i, u, lambda u: _reference_hvp(params, data, u)), v
    )
    assert_trees_close(ours, expected)


@pytest.mark.parametrize("product", PRODUCTS)
def test_in_scan_over_batches(product):
    params, _, v = _problem()
    batches = jax.tree.map(lambda *xs: jnp.stack(xs), *[_problem(k)[1] for k in range(4)])

    def ours(carry, batch):
        return carry, product(lambda p: loss(p, batch), params, v)[1]

    def reference(carry, batch):
        return carry, _reference_hvp(params, batch, v)

    assert_trees_close(lax.scan(ours, 0.0, batches)[1], lax.scan(reference, 0.0, batches)[1])


@pytest.mark.parametrize("product", PRODUCTS)
def test_in_while_loop(product):
    x0 = jnp.array([2.0, -1.5])

    def newton_step(x):  # Newton on sum(x^4)/4 along the diagonal direction: H v with v = ones
        _, hv = product(lambda x: (x**4).sum() / 4, x, jnp.ones_like(x))
        return x - x**3 / hv

    def run(step):
        return lax.while_loop(lambda c: c[1] < 10, lambda c: (step(c[0]), c[1] + 1), (x0, 0))[0]

    assert_trees_close(run(newton_step), run(lambda x: x - x / 3))


def test_hessian_inside_jit_and_vmap():
    xs = jnp.arange(6.0).reshape(3, 2)

    def f(x):
        return jnp.sin(x).sum() * (x**2).sum()

    ours = jax.jit(jax.vmap(lambda x: jaxhvp.hessian(f, x)))(xs)
    assert_trees_close(ours, jax.vmap(jax.hessian(f))(xs))
