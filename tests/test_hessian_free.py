"""``jaxhvp.optax.hessian_free`` against a dense Levenberg-Marquardt step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxhvp
import jaxhvp.optax

X = np.random.default_rng(0).normal(size=(200, 4))
Y = np.tanh(X @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.2) + 0.1 * np.random.default_rng(1).normal(
    size=200
)


def model(params):
    return jnp.tanh(X @ params["w"] + params["b"])


def squared_error(out):
    return 0.5 * jnp.mean((out - Y) ** 2)


def objective(params):
    return squared_error(model(params))


def dense_gauss_newton(params):
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    jac = jax.jacobian(lambda theta: model(unravel(theta)))(flat)
    return jac.T @ jac / X.shape[0], flat, unravel


PARAMS = {"w": np.array([0.3, -0.2, 0.1, 0.5]), "b": np.asarray(0.1)}  # float64 in the tests


def test_one_step_is_the_damped_gauss_newton_step_and_adapts_the_damping():
    opt = jaxhvp.optax.hessian_free(damping=0.5, cg_tol=1e-12, cg_maxiter=100)
    state = opt.init(PARAMS)
    grads = jax.grad(objective)(PARAMS)
    updates, state = opt.update(grads, state, PARAMS, model_fn=model, loss_fn=squared_error)
    g_matrix, flat, unravel = dense_gauss_newton(PARAMS)
    g = jax.flatten_util.ravel_pytree(grads)[0]
    step = -np.linalg.solve(g_matrix + 0.5 * np.eye(5), g)
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(updates)[0], step, rtol=1e-9)
    predicted = g @ step + 0.5 * step @ g_matrix @ step
    actual = objective(unravel(flat + step)) - objective(PARAMS)
    np.testing.assert_allclose(state.ratio, actual / predicted, rtol=1e-9)
    expected = 0.5 * (
        1.5 if actual / predicted < 0.25 else 2 / 3 if actual / predicted > 0.75 else 1
    )
    np.testing.assert_allclose(state.damping, expected, rtol=1e-12)
    assert int(state.cg_status) == 0


def test_the_hessian_curvature_takes_obj_fn():
    opt = jaxhvp.optax.hessian_free(curvature="hessian", damping=2.0, cg_tol=1e-12)
    state = opt.init(PARAMS)
    grads = jax.grad(objective)(PARAMS)
    updates, state = opt.update(grads, state, PARAMS, obj_fn=objective)
    flat, unravel = jax.flatten_util.ravel_pytree(PARAMS)
    hessian = jax.hessian(lambda theta: objective(unravel(theta)))(flat)
    step = -np.linalg.solve(hessian + 2.0 * np.eye(5), jax.flatten_util.ravel_pytree(grads)[0])
    np.testing.assert_allclose(jax.flatten_util.ravel_pytree(updates)[0], step, rtol=1e-9)


def test_a_step_that_raises_the_loss_is_not_taken_and_the_damping_rises():
    opt = jaxhvp.optax.hessian_free(learning_rate=50.0, damping=1e-3)
    state = opt.init(PARAMS)
    grads = jax.grad(objective)(PARAMS)
    updates, state = opt.update(grads, state, PARAMS, model_fn=model, loss_fn=squared_error)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(updates))
    assert float(state.ratio) < 0.25  # the loss rose: the ratio is below 1/4 (or negative)
    np.testing.assert_allclose(state.damping, 1.5e-3)
    assert all(np.all(np.asarray(d) == 0) for d in jax.tree_util.tree_leaves(state.direction))


def test_jitted_in_a_chain_with_a_fresh_batch_per_step_it_fits_the_data():
    opt = optax.chain(optax.clip_by_global_norm(10.0), jaxhvp.optax.hessian_free(damping=1e-2))

    @jax.jit
    def step(params, state, rows):
        def batch_model(p):
            return jnp.tanh(jnp.asarray(X)[rows] @ p["w"] + p["b"])

        def batch_loss(out):
            return 0.5 * jnp.mean((out - jnp.asarray(Y)[rows]) ** 2)

        grads = jax.grad(lambda p: batch_loss(batch_model(p)))(params)
        updates, state = opt.update(grads, state, params, model_fn=batch_model, loss_fn=batch_loss)
        return optax.apply_updates(params, updates), state

    params, state = PARAMS, opt.init(PARAMS)
    start = objective(params)
    for i in range(20):
        params, state = step(params, state, jax.random.permutation(jax.random.key(i), 200)[:50])
    assert objective(params) < 0.1 * start
    hf_state = state[1]
    assert int(hf_state.count) == 20


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"curvature": "fisher"}, jaxhvp.HVPError, "curvature given to hessian_free"),
        ({"cg_maxiter": 0}, jaxhvp.HVPError, "cg_maxiter given to hessian_free"),
        ({"damping": -1.0}, jaxhvp.HVPError, "damping given to hessian_free"),
        ({"warm_start_decay": 2.0}, jaxhvp.HVPError, "warm_start_decay given to hessian_free"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxhvp.optax.hessian_free(**kwargs)


def test_missing_extra_arguments_are_named():
    opt = jaxhvp.optax.hessian_free()
    state = opt.init(PARAMS)
    grads = jax.grad(objective)(PARAMS)
    with pytest.raises(TypeError, match="needs model_fn="):
        opt.update(grads, state, PARAMS, loss_fn=squared_error)
    hessian = jaxhvp.optax.hessian_free(curvature="hessian")
    with pytest.raises(TypeError, match="needs obj_fn="):
        hessian.update(grads, hessian.init(PARAMS), PARAMS, model_fn=model)
