"""The Hessian operator, the AD modes and has_aux, against dense references."""

import jax
import jax.numpy as jnp
import lineax
import numpy as np
import pytest
import scipy.sparse.linalg
from conftest import assert_trees_close
from jax import lax

import jaxhvp
from jaxhvp import HVPError
from jaxhvp._eager import _auto

MODES = ["fwd-rev", "rev-rev", "rev-fwd"]


def loss(params):
    """A small tanh network on fixed data: non-quadratic, with a dict of parameters."""
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    hidden = jnp.tanh(x @ params["w"] + params["b"])
    return (hidden**2).sum() + jnp.sin(params["w"]).sum() * params["b"].sum()


def _point():
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    params = {"w": jax.random.normal(keys[0], (3, 2)), "b": jax.random.normal(keys[1], (2,))}
    v = jax.tree.map(lambda p: jax.random.normal(keys[2], p.shape), params)
    return params, v


def dense(params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return jax.hessian(lambda f: loss(unravel(f)))(flat), flat, unravel


def reference_product(params, v):
    matrix, _, unravel = dense(params)
    return unravel(matrix @ jax.flatten_util.ravel_pytree(v)[0])


# --- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*MODES, "auto"])
@pytest.mark.parametrize("name", ["hvp", "vhp"])
@pytest.mark.parametrize("jit", [True, False])
def test_every_mode_gives_the_dense_product(name, mode, jit):
    params, v = _point()
    out, prod = getattr(jaxhvp, name)(loss, params, v, mode=mode, jit=jit)
    assert_trees_close(prod, reference_product(params, v))
    assert_trees_close(out, loss(params))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_works_under_jit_vmap_and_create_graph(mode):
    params, v = _point()
    vs = jax.tree.map(lambda x: jnp.stack([x, -2 * x]), v)
    batched = jax.jit(jax.vmap(lambda v: jaxhvp.hvp(loss, params, v, mode=mode)[1]))(vs)
    assert_trees_close(batched, jax.vmap(lambda v: reference_product(params, v))(vs))

    def curvature(p):
        prod = jaxhvp.hvp(loss, p, v, create_graph=True, mode=mode)[1]
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(prod), jax.tree.leaves(v)))

    def reference(p):
        prod = reference_product(p, v)
        return sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(prod), jax.tree.leaves(v)))

    assert_trees_close(jax.grad(curvature)(params), jax.grad(reference)(params))


def test_invalid_mode_is_rejected_with_the_choices():
    params, v = _point()
    with pytest.raises(HVPError, match=r"'fwd-rev', 'rev-rev', 'rev-fwd', 'auto'.*'forward'"):
        jaxhvp.hvp(loss, params, v, mode="forward")
    with pytest.raises(HVPError, match="mode given to hessian_operator"):
        jaxhvp.hessian_operator(loss, params, mode=None)


def test_auto_mode_is_deterministic_and_reused_under_jit():
    params, v = _point()
    first = jaxhvp.hvp(loss, params, v, mode="auto")[1]
    info = jaxhvp.cache_info()
    again = jaxhvp.hvp(loss, params, v, mode="auto")[1]
    assert_trees_close(first, again, rtol=0, atol=0)
    after = jaxhvp.cache_info()
    assert (after.misses, after.compilations) == (info.misses, info.compilations)
    traced = jax.jit(lambda p, v: jaxhvp.hvp(loss, p, v, mode="auto")[1])(params, v)
    assert_trees_close(traced, first)


@pytest.fixture
def measurements(monkeypatch):
    """The signatures ``mode="auto"`` measures, in order."""
    seen = []
    measure = _auto.Fastest.measure

    def counted(self, signature, run):
        seen.append(signature)
        return measure(self, signature, run)

    monkeypatch.setattr(_auto.Fastest, "measure", counted)
    monkeypatch.setattr(_auto, "_choices", type(_auto._choices)())  # none made yet
    jaxhvp.cache_clear()  # nor kernels traced with one
    return seen


@pytest.mark.parametrize("entry", ["hvp", "hessian_operator"])
def test_auto_measures_once_per_signature(entry, measurements):
    def product(params, v, **kwargs):
        if entry == "hvp":
            return jaxhvp.hvp(loss, params, v, mode="auto", **kwargs)[1]
        return jaxhvp.hessian_operator(loss, params, mode="auto", **kwargs).mv(v)

    params, v = _point()
    expected = reference_product(params, v)
    for _ in range(3):
        assert_trees_close(product(params, v), expected)
    assert len(measurements) == 1
    assert_trees_close(product(params, v, jit=False), expected)  # follows the choice made
    assert len(measurements) == 1
    wider = {"w": jnp.ones((3, 5)), "b": jnp.ones(5)}
    product(wider, wider)  # a new signature: measured too
    assert len(measurements) == 2


# --- has_aux ----------------------------------------------------------------------------------


def loss_with_aux(params):
    value = loss(params)
    return value, {"value_twice": 2 * value, "norm": jnp.linalg.norm(params["w"])}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["hvp", "vhp"])
def test_has_aux_returns_aux_last(name, mode):
    params, v = _point()
    out, prod, aux = getattr(jaxhvp, name)(loss_with_aux, params, v, mode=mode, has_aux=True)
    assert_trees_close(prod, reference_product(params, v))
    assert_trees_close(out, loss(params))
    assert_trees_close(aux, loss_with_aux(params)[1])


def test_has_aux_requires_a_pair():
    params, v = _point()
    with pytest.raises(TypeError, match=r"must return a pair \(output, aux\).*length 3"):
        jaxhvp.hvp(lambda p: (loss(p), 1.0, 2.0), params, v, has_aux=True)
    with pytest.raises(TypeError, match=r"must return a pair \(output, aux\)"):
        jaxhvp.hvp(loss, params, v, has_aux=True)


# --- the operator -----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_operator_products_value_and_grad(mode):
    params, v = _point()
    op = jaxhvp.hessian_operator(loss, params, mode=mode)
    expected = reference_product(params, v)
    assert_trees_close(op(v), expected)
    assert_trees_close(op.mv(v), expected)
    assert_trees_close(op @ v, expected)
    assert_trees_close(op.value, loss(params))
    assert_trees_close(op.grad, jax.grad(loss)(params))
    assert op.aux is None
    assert op.mode == mode


def test_operator_with_aux_and_tuple_inputs():
    x, y = jnp.array([1.0, 2.0]), jnp.array([0.5])

    def f(x, y):
        value = (x**3).sum() * y[0] + (y**4).sum()
        return value, value + 1

    op = jaxhvp.hessian_operator(f, (x, y), has_aux=True)
    assert_trees_close(op.aux, f(x, y)[1])
    prod = op((jnp.ones(2), jnp.ones(1)))
    assert type(prod) is tuple
    hessian = jax.hessian(lambda z: f(z[:2], z[2:])[0])(jnp.concatenate([x, y]))
    assert_trees_close(jnp.concatenate(prod), hessian @ jnp.ones(3))


def test_operator_checks_vectors_like_hvp():
    params, _ = _point()
    op = jaxhvp.hessian_operator(loss, params)
    with pytest.raises(HVPError, match=r"Entry \['b'\] in v has invalid size"):
        op({"w": jnp.ones((3, 2)), "b": jnp.ones(3)})


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3])
def test_matmat_chunked_and_not(batch_size):
    params, v = _point()
    op = jaxhvp.hessian_operator(loss, params)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x, -x, 0 * x, x + 1]), v)
    expected = jax.vmap(lambda v: reference_product(params, v))(stacked)
    assert_trees_close(op.matmat(stacked, batch_size=batch_size), expected)


def test_matmat_rejects_bad_stacks():
    params, v = _point()
    op = jaxhvp.hessian_operator(loss, params)
    with pytest.raises(HVPError, match=r"at \['b'\] expected \(k, \*\(2,\)\)"):
        op.matmat(v)
    ragged = {"w": jnp.ones((2, 3, 2)), "b": jnp.ones((3, 2))}
    with pytest.raises(HVPError, match="same number of vectors"):
        op.matmat(ragged)
    with pytest.raises(HVPError, match="batch_size given to matmat must be an int >= 1"):
        op.matmat(jax.tree.map(lambda x: x[None], v), batch_size=0)


def test_as_matrix_is_the_dense_hessian():
    params, _ = _point()
    matrix, _, _ = dense(params)
    assert_trees_close(jaxhvp.hessian_operator(loss, params).as_matrix(), matrix)


def test_operator_crosses_jit_and_loops():
    params, v = _point()
    build = jax.jit(lambda p: jaxhvp.hessian_operator(loss, p))
    op = build(params)
    use = jax.jit(lambda op, v: op(v))
    assert_trees_close(use(op, v), reference_product(params, v))

    def power_step(carry):
        op, u, i = carry
        hu = op(u)
        norm = jnp.sqrt(sum(jnp.vdot(a, a) for a in jax.tree.leaves(hu)))
        return op, jax.tree.map(lambda a: a / norm, hu), i + 1

    _, u, _ = lax.while_loop(lambda c: c[2] < 50, power_step, (op, v, 0))
    matrix, _, _ = dense(params)
    eigenvalues = jnp.linalg.eigvalsh(matrix)
    top = eigenvalues[jnp.argmax(jnp.abs(eigenvalues))]
    rayleigh = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(op(u))))
    np.testing.assert_allclose(rayleigh, top, rtol=1e-6)


def _spd_problem():
    """A strictly convex function, so CG applies: 0.5 x^T A x + sum(cosh(x))."""
    a = jax.random.normal(jax.random.PRNGKey(3), (5, 5))
    matrix = a @ a.T + jnp.eye(5)

    def f(x):
        return 0.5 * x @ matrix @ x + jnp.cosh(x).sum()

    x = jnp.linspace(-1.0, 1.0, 5)
    return f, x, matrix + jnp.diag(jnp.cosh(x))


def test_operator_as_the_matrix_of_jax_cg():
    f, x, hessian = _spd_problem()
    op = jaxhvp.hessian_operator(f, x)
    step, _ = jax.scipy.sparse.linalg.cg(op, op.grad, tol=1e-12)
    assert_trees_close(step, jnp.linalg.solve(hessian, jax.grad(f)(x)), rtol=1e-8, atol=1e-8)
    in_jit = jax.jit(lambda op: jax.scipy.sparse.linalg.cg(op, op.grad, tol=1e-12)[0])(op)
    assert_trees_close(in_jit, step, rtol=1e-8, atol=1e-8)


def test_operator_as_scipy_linear_operator():
    f, x, hessian = _spd_problem()
    op = jaxhvp.hessian_operator(f, x).as_scipy()
    assert op.shape == (5, 5)
    rhs = np.arange(5.0)
    solution, info = scipy.sparse.linalg.cg(op, rhs, rtol=1e-12)
    assert info == 0
    np.testing.assert_allclose(solution, np.linalg.solve(np.asarray(hessian), rhs), rtol=1e-8)
    np.testing.assert_allclose(op @ rhs, np.asarray(hessian) @ rhs, rtol=1e-12)


def test_operator_as_lineax_operator():
    f, x, hessian = _spd_problem()
    operator = jaxhvp.hessian_operator(f, x).as_lineax()
    assert lineax.is_symmetric(operator)
    assert_trees_close(operator.as_matrix(), hessian)
    rhs = jnp.arange(5.0)
    # The user, who knows f is convex, adds the tag lineax's CG asks for.
    convex = lineax.TaggedLinearOperator(operator, lineax.positive_semidefinite_tag)
    solution = lineax.linear_solve(convex, rhs, solver=lineax.CG(rtol=1e-12, atol=1e-12))
    assert_trees_close(solution.value, jnp.linalg.solve(hessian, rhs), rtol=1e-8, atol=1e-8)


@jax.custom_vjp
def _custom_vjp_loss(x):
    return jnp.sum(jnp.sin(x) * x)


def _custom_vjp_forward(x):
    return jnp.sum(jnp.sin(x) * x), (x, jnp.cos(x))


def _custom_vjp_backward(residuals, g):
    x, cos = residuals
    return (g * (jnp.sin(x) + x * cos),)


_custom_vjp_loss.defvjp(_custom_vjp_forward, _custom_vjp_backward)


def test_auto_leaves_out_compositions_jax_cannot_build():
    """JAX has no forward mode through a jax.custom_vjp function, so rev-fwd fails to trace;
    mode="auto" then chooses between the other two and gives the dense Hessian's product."""
    x = jnp.linspace(0.1, 1.0, 4)
    v = jnp.arange(4.0)
    dense = jax.hessian(lambda x: jnp.sum(jnp.sin(x) * x))(x) @ v
    with pytest.raises(NotImplementedError):
        jaxhvp.hvp(_custom_vjp_loss, x, v, mode="rev-fwd")
    np.testing.assert_allclose(jaxhvp.hvp(_custom_vjp_loss, x, v, mode="auto")[1], dense)
    op = jaxhvp.hessian_operator(_custom_vjp_loss, x, mode="auto")
    np.testing.assert_allclose(op.mv(v), dense)
