"""``jaxhvp.influence`` against a dense computation and against leave-one-out retraining."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp

L2 = 0.01


def logistic_loss(params, example):
    """L2-regularised logistic loss of one example; the training objective is its mean."""
    x, y = example
    logit = x @ params["w"] + params["b"]
    data = jnp.logaddexp(0.0, logit) - y * logit
    return data + 0.5 * L2 * (params["w"] @ params["w"] + params["b"] ** 2)


def model(params, batch):
    x, _ = batch
    return x @ params["w"] + params["b"]


def output_loss(logits, batch):
    _, y = batch
    return jnp.mean(jnp.logaddexp(0.0, logits) - y * logits)


def make_data(n, key, d=3):
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (n, d))
    w_true = jnp.arange(1.0, d + 1.0) / d
    y = (jax.random.uniform(ky, (n,)) < jax.nn.sigmoid(x @ w_true)).astype(x.dtype)
    return x, y


def fit(x, y, weights):
    """The minimiser of the weighted mean loss, by 30 dense Newton steps (an independent
    reference: no jaxhvp)."""
    params = {"w": jnp.zeros(x.shape[1]), "b": jnp.zeros(())}
    flat, unravel = ravel_pytree(params)

    def objective(theta):
        losses = jax.vmap(logistic_loss, in_axes=(None, 0))(unravel(theta), (x, y))
        return jnp.sum(weights * losses) / jnp.sum(weights)

    def newton(_, theta):
        return theta - jnp.linalg.solve(jax.hessian(objective)(theta), jax.grad(objective)(theta))

    return unravel(jax.lax.fori_loop(0, 30, newton, flat))


def dense_influence(params, train, test):
    flat, unravel = ravel_pytree(params)

    def mean_loss(theta):
        return jnp.mean(jax.vmap(logistic_loss, in_axes=(None, 0))(unravel(theta), train))

    def grads(data):
        return jax.vmap(jax.grad(lambda theta, e: logistic_loss(unravel(theta), e)), (None, 0))(
            flat, data
        )

    hessian = jax.hessian(mean_loss)(flat)
    return -grads(test) @ jnp.linalg.solve(hessian, grads(train).T)


@pytest.fixture(scope="module")
def problem():
    with jax.enable_x64(True):
        x, y = make_data(64, jax.random.key(0))
        params = fit(x, y, jnp.ones(64))
        test = (x[:5] + 0.3, y[:5])
        return params, (x, y), test


@pytest.mark.parametrize(
    "method, options",
    [
        ("cg", {}),
        ("minres", {}),
        ("lowrank", {"rank": 4, "key": jax.random.key(0)}),
    ],
)
def test_matches_the_dense_influence(problem, method, options):
    params, train, test = problem
    result = jaxhvp.influence(logistic_loss, params, train, test, method=method, **options)
    np.testing.assert_allclose(result.values, dense_influence(params, train, test), rtol=1e-7)
    assert result.values.shape == (5, 64)
    assert np.all(np.asarray(result.info.status) == 0)


def test_tuple_params_reach_the_loss_as_one_tuple(problem):
    """The Hessian operator passes tuple inputs as separate arguments (torch's convention);
    influence's loss still gets ``(params, example)``."""
    params, train, test = problem

    def tuple_loss(pair, example):
        return logistic_loss({"w": pair[0], "b": pair[1]}, example)

    pair = (params["w"], params["b"])
    result = jaxhvp.influence(tuple_loss, pair, train, test)
    np.testing.assert_allclose(result.values, dense_influence(params, train, test), rtol=1e-7)


def test_batches_of_training_and_test_examples_give_the_same_values(problem):
    params, train, test = problem
    whole = jaxhvp.influence(logistic_loss, params, train, test)
    batched = jaxhvp.influence(
        logistic_loss, params, train, test, batch_size=16, test_batch_size=2, tol=1e-12
    )
    np.testing.assert_allclose(batched.values, whole.values, rtol=1e-7)
    assert_trees_close(batched.factors, whole.factors, rtol=1e-7, atol=1e-12)


def test_a_ggn_curvature_matches_the_dense_gauss_newton_influence(problem):
    params, (x, y), test = problem
    batches = (x.reshape(4, 16, 3), y.reshape(4, 16))
    # The regulariser is a damping of the GGN (its Hessian is L2 I): GGN + L2 I.
    ggn = jaxhvp.ggn_operator(model, output_loss, params, batches=batches)
    result = jaxhvp.influence(logistic_loss, params, (x, y), test, curvature=ggn, damping=L2)
    p = jax.nn.sigmoid(x @ params["w"] + params["b"])
    design = jnp.concatenate([jnp.ones((x.shape[0], 1)), x], axis=1)  # ravel order: b, w
    gauss_newton = design.T @ (design * (p * (1 - p))[:, None]) / x.shape[0] + L2 * jnp.eye(4)
    flat_grads = jax.vmap(lambda e: ravel_pytree(jax.grad(logistic_loss)(params, e))[0])
    expected = -flat_grads(test) @ jnp.linalg.solve(gauss_newton, flat_grads((x, y)).T)
    np.testing.assert_allclose(result.values, expected, rtol=1e-7)


def test_predicts_the_change_of_test_loss_when_an_example_is_left_out():
    """Koh and Liang's check: retraining without example j changes the test loss by about
    -values[j] / n, on a convex problem where the Hessian is positive definite."""
    n = 200
    x, y = make_data(n, jax.random.key(1))
    params = fit(x, y, jnp.ones(n))
    test = (jnp.array([[0.5, -1.0, 2.0]]), jnp.array([1.0]))
    result = jaxhvp.influence(logistic_loss, params, (x, y), test, batch_size=50)
    predicted = -result.values[0] / n
    chosen = jnp.argsort(jnp.abs(predicted))[-12:]  # the most influential examples
    refits = jax.vmap(lambda j: fit(x, y, jnp.ones(n).at[j].set(0.0)))(chosen)
    test_loss = jax.vmap(lambda p: logistic_loss(p, (test[0][0], test[1][0])))
    actual = test_loss(refits) - logistic_loss(params, (test[0][0], test[1][0]))
    np.testing.assert_allclose(actual, predicted[chosen], rtol=0.1)
    assert np.corrcoef(actual, predicted[chosen])[0, 1] > 0.99


def test_under_jit_equals_eager(problem):
    params, train, test = problem
    eager = jaxhvp.influence(logistic_loss, params, train, test)
    jitted = jax.jit(lambda p, tr, te: jaxhvp.influence(logistic_loss, p, tr, te).values)
    np.testing.assert_allclose(jitted(params, train, test), eager.values, rtol=1e-10)


def test_lissa_reports_its_residual(problem):
    params, train, test = problem
    result = jaxhvp.influence(
        logistic_loss, params, train, test, method="lissa", scale=2.0, maxiter=200, tol=1e-3
    )
    dense = dense_influence(params, train, test)
    # The series' error after 200 terms is what info.residual says, not hidden.
    assert np.all(np.asarray(result.info.residual) < 1e-3)
    np.testing.assert_allclose(result.values, dense, rtol=1e-2, atol=1e-2 * np.abs(dense).max())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"batch_size": 7}, "batch_size given to influence must divide the 64"),
        ({"curvature": "fisher"}, "curvature given to influence must be 'hessian'"),
        ({"method": "qr"}, "method given to influence must be one of"),
        ({"nonsense": 1}, "passes only the options of jaxhvp.solve"),
        ({"method": "lissa"}, "needs scale="),
    ],
)
def test_bad_arguments_are_named(problem, kwargs, match):
    params, train, test = problem
    with pytest.raises(jaxhvp.HVPError, match=match):
        jaxhvp.influence(logistic_loss, params, train, test, **kwargs)


def test_params_must_be_floating_arrays(problem):
    _, train, test = problem
    with pytest.raises(jaxhvp.HVPError, match="params given to influence must be a pytree"):
        jaxhvp.influence(logistic_loss, {"w": [1, 2, 3], "b": 0}, train, test)


def test_a_curvature_on_other_vectors_names_the_differing_path(problem):
    params, train, test = problem
    other = jaxhvp.hessian_operator(lambda w: (w**2).sum(), params["w"])
    with pytest.raises(jaxhvp.HVPError, match="must act on vectors shaped like params") as e:
        jaxhvp.influence(logistic_loss, params, train, test, curvature=other)
    assert "params is a dict but curvature.like is an array" in str(e.value)
    assert "PyTreeDef" not in str(e.value)
