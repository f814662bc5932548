"""jaxhvp.optax (Sophia, AdaHessian) against independent references, in float64.

* The diagonal estimates, read from the optimiser states after one step with ``b2=0``, are
  compared in expectation with dense references: ``jax.hessian`` of the loss over the
  flattened parameters for Hutchinson's estimate, and ``J^T (diag(p) - p p^T) J`` from
  ``jax.jacobian`` of the logits for Gauss-Newton-Bartlett. The mean of many independent
  one-probe estimates must lie within a few of its own standard errors of the reference.
* The update rules are checked exactly, step by step, against numpy transcriptions of the
  papers' algorithms on diagonal quadratics (where one Rademacher probe gives the Hessian
  diagonal exactly).
* Training runs compare the final training loss with that of a tuned Adam, under one
  protocol for every method (see the comment above the runs and docs/optax.md).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp
import jaxhvp.optax as jo

# --- a small classifier: 3 inputs, 4 tanh units, 3 classes (31 parameters) ----------------

NUM_SAMPLES = 4000  # independent one-probe estimates averaged in the expectation tests
SIGMAS = 5.0  # the mean must be within this many standard errors of the reference


def mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"] + params["b2"]


def cross_entropy(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


@functools.cache
def small_problem():
    """Float64 parameters and one batch of 6 examples (call inside a test: x64 is on)."""
    rng = np.random.default_rng(0)
    params = {
        "w1": jnp.asarray(rng.standard_normal((3, 4))),
        "b1": jnp.asarray(0.3 * rng.standard_normal(4)),
        "w2": jnp.asarray(rng.standard_normal((4, 3))),
        "b2": jnp.asarray(0.3 * rng.standard_normal(3)),
    }
    x = jnp.asarray(rng.standard_normal((6, 3)))
    y = jnp.asarray(rng.integers(0, 3, 6))
    return params, x, y


@jax.jit
def dense_hessian(params, x, y):
    """``jax.hessian`` of the loss over the flattened parameters: the reference."""
    flat, unravel = ravel_pytree(params)
    return jax.hessian(lambda f: cross_entropy(unravel(f), x, y))(flat)


@jax.jit
def dense_output_jacobian(params, x):
    """``J``: shape (batch, classes, parameters), from ``jax.jacobian`` of the logits."""
    flat, unravel = ravel_pytree(params)
    return jax.jacobian(lambda f: mlp(unravel(f), x))(flat)


def dense_gauss_newton_diagonal(params, x):
    """``diag(G)``, ``G = (1/B) sum_b J_b^T (diag(p_b) - p_b p_b^T) J_b``: the Gauss-Newton
    matrix (equal to the Fisher) of the mean softmax cross-entropy over the B examples."""
    jac = np.asarray(dense_output_jacobian(params, x))
    p = np.asarray(jax.nn.softmax(mlp(params, x), axis=-1))
    fisher = np.stack([np.diag(pb) - np.outer(pb, pb) for pb in p])  # (B, C, C)
    g = np.einsum("bci,bcd,bdj->ij", jac, fisher, jac) / x.shape[0]
    return np.diag(g)


@jax.jit
def first_hutchinson_states(keys, params, x, y):
    """``state.nu`` after one step with ``b2=0`` from each key, of Sophia-H (the estimate)
    and of AdaHessian (its square); the two draw the same probe from the same key."""
    sophia = jo.scale_by_sophia(b2=0.0, update_interval=1)
    adahessian = jo.scale_by_adahessian(b2=0.0)
    obj = lambda p: cross_entropy(p, x, y)  # noqa: E731

    def one(key):
        nus = []
        for opt in (sophia, adahessian):
            state = opt.init(params)._replace(key=key)
            _, state = opt.update(params, state, params, obj_fn=obj)
            nus.append(ravel_pytree(state.nu)[0])
        return tuple(nus)

    return jax.vmap(one)(keys)


@jax.jit
def first_gnb_states(keys, params, x):
    """``state.nu`` after one step of Sophia-G with ``b2=0``: one estimate per key."""
    opt = jo.scale_by_sophia(b2=0.0, update_interval=1, estimator="gauss-newton-bartlett")

    def one(key):
        state = opt.init(params)._replace(key=key)
        _, state = opt.update(params, state, params, model_fn=lambda p: mlp(p, x))
        return ravel_pytree(state.nu)[0]

    return jax.vmap(one)(keys)


def assert_unbiased(samples, expected):
    """The mean of the samples is within SIGMAS standard errors (from the samples) of
    ``expected``, entry by entry; the standard errors are small enough to tell."""
    samples = np.asarray(samples)
    mean = samples.mean(axis=0)
    stderr = samples.std(axis=0, ddof=1) / np.sqrt(samples.shape[0])
    assert stderr.max() < 0.05 * np.abs(expected).max()  # the check can see a bias
    np.testing.assert_array_less(np.abs(mean - expected), SIGMAS * stderr + 1e-12)


def keys(seed):
    return jax.random.split(jax.random.key(seed), NUM_SAMPLES)


def test_sophia_hutchinson_estimate_is_unbiased():
    """Sophia-H's estimate ``u * (H u)``: E = diag(H)."""
    params, x, y = small_problem()
    estimates, _ = first_hutchinson_states(keys(1), params, x, y)
    assert_unbiased(estimates, np.diag(np.asarray(dense_hessian(params, x, y))))


def test_adahessian_estimate_is_hutchinsons():
    """AdaHessian keeps ``D * D``. From the same key it is the square of Sophia-H's
    unbiased estimate, and its own mean is the second moment of Hutchinson's estimate with
    Rademacher probes: ``E[D_i^2] = sum_j H_ij^2 = (H @ H)_ii`` (the variance adds
    ``sum_{j != i} H_ij^2`` to ``H_ii^2``)."""
    params, x, y = small_problem()
    estimates, squares = first_hutchinson_states(keys(1), params, x, y)
    np.testing.assert_allclose(squares, np.asarray(estimates) ** 2, rtol=1e-12, atol=1e-15)
    hessian = np.asarray(dense_hessian(params, x, y))
    assert_unbiased(squares, np.sum(hessian**2, axis=1))


def test_sophia_gnb_estimate_is_unbiased_for_the_gauss_newton_diagonal():
    """Sophia-G's estimate ``B * g_hat * g_hat``, ``g_hat`` the gradient of the mean loss
    at sampled labels, has expectation ``diag(G)``, the Gauss-Newton diagonal of the MEAN
    loss: ``E[g_hat g_hat^T] = G / B`` because the B per-example residuals are independent
    with mean zero and covariance ``diag(p_b) - p_b p_b^T``."""
    params, x, _ = small_problem()
    exact = dense_gauss_newton_diagonal(params, x)
    assert_unbiased(first_gnb_states(keys(2), params, x), exact)


def test_sophia_gnb_estimate_is_one_of_the_exact_values():
    """With 6 examples and 3 classes there are 3**6 label draws: each estimate must equal
    ``B * g_hat(y)**2`` for one of them, and the probability-weighted sum of those values
    is exactly ``diag(G)`` (the scaling claimed above, without sampling error)."""
    params, x, _ = small_problem()
    jac = np.asarray(dense_output_jacobian(params, x))
    p = np.asarray(jax.nn.softmax(mlp(params, x), axis=-1))
    batch, classes = p.shape
    values, weights = [], []
    for labels in itertools.product(range(classes), repeat=batch):
        residual = p - np.eye(classes)[list(labels)]  # grad of the loss in the logits
        g_hat = np.einsum("bc,bci->i", residual, jac) / batch
        values.append(batch * g_hat**2)
        weights.append(np.prod(p[np.arange(batch), list(labels)]))
    values = np.stack(values)
    np.testing.assert_allclose(
        np.asarray(weights) @ values, dense_gauss_newton_diagonal(params, x), rtol=1e-10
    )
    samples = np.asarray(first_gnb_states(keys(2), params, x))[:50]
    distance = np.abs(samples[:, None, :] - values[None, :, :]).max(axis=-1)  # (50, 729)
    assert distance.min(axis=1).max() < 1e-12


# --- exact steps on diagonal quadratics -------------------------------------------------------


def quadratic(curvature, center):
    """``0.5 * sum(a * (p - c)**2)`` over a pytree: its Hessian is ``diag(a)``, so one
    Rademacher probe gives the diagonal exactly (``u * (a * u) = a``)."""

    def loss(params):
        terms = jax.tree.map(lambda a, p, c: jnp.sum(a * (p - c) ** 2), curvature, params, center)
        return 0.5 * sum(jax.tree.leaves(terms))

    return loss


def quadratic_problem(structure):
    """Parameters, curvature (mixed signs and sizes) and centre as a dict or a tuple."""
    rng = np.random.default_rng(1)
    curvature = np.array([4.0, 1.0, -2.0, 1e-9, 30.0, 0.5, 2.0, -0.1, 8.0])
    arrays = [rng.standard_normal(9), curvature, 0.3 * rng.standard_normal(9)]
    trees = []
    for values in arrays:
        w, b = jnp.asarray(values[:6].reshape(2, 3)), jnp.asarray(values[6:])
        trees.append({"w": w, "b": b} if structure == "dict" else (w, b))
    return trees


def flat(tree):
    return np.asarray(ravel_pytree(tree)[0])


SOPHIA_HYPER = dict(b1=0.8, b2=0.5, gamma=0.5, eps=1e-3, weight_decay=0.1, update_interval=2)


@pytest.mark.parametrize(
    ("structure", "jit"), [("dict", True), ("tuple", True), ("dict", False)], ids=str
)
def test_sophia_steps_match_the_paper(structure, jit):
    """Three steps of Sophia-H (Algorithm 3) against a numpy transcription. The objective
    changes every step (curvature ``a * (1 + t)``), so a curvature estimate on step 1 (not
    an estimate step with ``update_interval=2``) would show in ``h``."""
    params, a, c = quadratic_problem(structure)
    lr, hp = 0.1, SOPHIA_HYPER
    opt = jo.sophia(lr, **hp, key=jax.random.key(3))

    def step(params, state, t):
        obj = quadratic(jax.tree.map(lambda x: x * (1 + t), a), c)
        updates, state = opt.update(jax.grad(obj)(params), state, params, obj_fn=obj)
        return optax.apply_updates(params, updates), state

    step = jax.jit(step) if jit else step
    theta, m, h = flat(params), 0.0, 0.0
    ratios = []
    state = opt.init(params)
    for t in range(3):
        at = flat(a) * (1 + t)
        g = at * (theta - flat(c))
        m = hp["b1"] * m + (1 - hp["b1"]) * g
        if t % hp["update_interval"] == 0:
            h = hp["b2"] * h + (1 - hp["b2"]) * at
        ratios.append(m / np.maximum(hp["gamma"] * h, hp["eps"]))
        theta = theta - lr * (np.clip(ratios[-1], -1, 1) + hp["weight_decay"] * theta)

        params, state = step(params, state, t)
        sophia_state = state[0]
        np.testing.assert_allclose(flat(params), theta, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(flat(sophia_state.mu), m, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(flat(sophia_state.nu), h, rtol=1e-12, atol=1e-14)
        assert int(sophia_state.count) == t + 1
    ratios = np.abs(np.stack(ratios))
    assert (ratios < 1).any() and (ratios > 1).any()  # both sides of the clip are exercised


ADAHESSIAN_HYPER = dict(b1=0.8, b2=0.6, eps=1e-3, weight_decay=0.1, hessian_power=0.5)


@pytest.mark.parametrize(
    ("spatial_averaging", "spatial_axes"), [(None, None), ("OIHW", (2, 3)), ("HWIO", (0, 1))]
)
def test_adahessian_steps_match_the_paper(spatial_averaging, spatial_axes):
    """Three steps of AdaHessian against a numpy transcription of the paper's eqs. 9-10 with
    bias correction, Hessian power and decoupled weight decay; with spatial averaging, the
    4-axis kernel's diagonal is averaged over its spatial axes, the bias's is not. The key
    in the state is split once per step."""
    rng = np.random.default_rng(2)
    shapes = {"b": (3,), "kernel": (2, 3, 2, 2)}
    a = {
        k: jnp.asarray(rng.choice([-1.0, 1.0], s) * rng.uniform(0.1, 5.0, s))
        for k, s in shapes.items()
    }
    c = {k: jnp.asarray(0.3 * rng.standard_normal(s)) for k, s in shapes.items()}
    params = {k: jnp.asarray(rng.standard_normal(s)) for k, s in shapes.items()}
    lr, hp = 0.1, ADAHESSIAN_HYPER
    opt = jo.adahessian(lr, **hp, spatial_averaging=spatial_averaging, key=jax.random.key(7))
    key = jax.random.key(7)  # the state's key is split once per step

    @jax.jit
    def step(params, state, t):
        obj = quadratic(jax.tree.map(lambda x: x * (1 + t), a), c)
        updates, state = opt.update(jax.grad(obj)(params), state, params, obj_fn=obj)
        return optax.apply_updates(params, updates), state

    reference = {k: np.asarray(v) for k, v in params.items()}
    m = {k: 0.0 for k in shapes}
    v = {k: 0.0 for k in shapes}
    state = opt.init(params)
    for t in range(1, 4):
        for k in shapes:
            at = np.asarray(a[k]) * t
            g = at * (reference[k] - np.asarray(c[k]))
            d = at
            if spatial_axes is not None and k == "kernel":
                d = np.broadcast_to(at.mean(axis=spatial_axes, keepdims=True), at.shape)
            m[k] = hp["b1"] * m[k] + (1 - hp["b1"]) * g
            v[k] = hp["b2"] * v[k] + (1 - hp["b2"]) * d**2
            m_hat, v_hat = m[k] / (1 - hp["b1"] ** t), v[k] / (1 - hp["b2"] ** t)
            denominator = np.sqrt(v_hat) ** hp["hessian_power"] + hp["eps"]
            reference[k] = reference[k] - lr * (
                m_hat / denominator + hp["weight_decay"] * reference[k]
            )

        params, state = step(params, state, t - 1)
        assert_trees_close(params, {k: jnp.asarray(x) for k, x in reference.items()}, rtol=1e-12)
        assert_trees_close(state[0].nu, {k: jnp.asarray(x) for k, x in v.items()}, rtol=1e-12)
        assert int(state[0].count) == t
        key = jax.random.split(key)[0]
        assert jnp.array_equal(jax.random.key_data(state[0].key), jax.random.key_data(key))


def test_sophia_estimates_only_on_estimate_steps():
    """The objective's forward pass runs inside the estimate only on steps 0, k, 2k, ...
    (``lax.cond``): five jitted steps with ``update_interval=2`` run it three times."""
    calls = []

    def obj(p):
        jax.debug.callback(lambda: calls.append(1))
        return jnp.sum(p**4)

    opt = jo.sophia(0.1, update_interval=2)
    params = jnp.ones(3)
    state = opt.init(params)
    step = jax.jit(lambda state, p: opt.update(jnp.ones(3), state, p, obj_fn=obj))
    for _ in range(5):
        _, state = step(state, params)
    jax.effects_barrier()
    assert len(calls) == 3


def test_hyperparameters_can_be_injected():
    """``optax.inject_hyperparams`` passes every numeric hyperparameter as an array, traced
    inside ``update``: the learning rate in the state then scales the step."""
    obj = lambda p: jnp.sum(p**4)  # noqa: E731
    params = jnp.ones(3)
    for make in (jo.sophia, jo.adahessian):
        opt = optax.inject_hyperparams(make)(learning_rate=0.1)
        state = opt.init(params)
        step = jax.jit(lambda s: opt.update(jax.grad(obj)(params), s, params, obj_fn=obj))
        first, _ = step(state)
        state.hyperparams["learning_rate"] = jnp.asarray(0.2)
        second, _ = step(state)
        assert_trees_close(second, 2 * first)


# --- errors -------------------------------------------------------------------------------


def test_missing_objective_is_named():
    params = jnp.ones(2)
    for opt in (jo.sophia(0.1), jo.adahessian(0.1)):
        state = opt.init(params)
        with pytest.raises(TypeError, match=r"needs obj_fn=.*lambda p: loss\(p, batch\)"):
            opt.update(params, state, params)
    opt = jo.sophia(0.1, estimator="gauss-newton-bartlett")
    with pytest.raises(TypeError, match=r"needs model_fn="):
        opt.update(params, opt.init(params), params, obj_fn=lambda p: p.sum())


def test_bad_arguments_are_named():
    with pytest.raises(jaxhvp.HVPError, match=r"estimator given to sophia must be one of"):
        jo.sophia(0.1, estimator="newton")
    with pytest.raises(jaxhvp.HVPError, match=r"likelihood given to sophia"):
        jo.sophia(0.1, estimator="gauss-newton-bartlett", likelihood="poisson")
    for make in (jo.sophia, jo.adahessian):
        with pytest.raises(TypeError, match=r"key given to .* must be one JAX PRNG key"):
            make(0.1, key=1234)
        with pytest.raises(TypeError, match=r"key given to"):
            make(0.1, key=jax.random.split(jax.random.key(0)))
        with pytest.raises(jaxhvp.HVPError, match=r"b1 given to .* in \[0.0, 1.0\)"):
            make(0.1, b1=1.0)
        with pytest.raises(TypeError, match=r"learning_rate given to .* or a schedule"):
            make("fast")
    with pytest.raises(jaxhvp.HVPError, match=r"update_interval given to sophia"):
        jo.sophia(0.1, update_interval=0)
    with pytest.raises(jaxhvp.HVPError, match=r"gamma given to sophia"):
        jo.sophia(0.1, gamma=0.0)
    with pytest.raises(jaxhvp.HVPError, match=r"hessian_power given to adahessian"):
        jo.adahessian(0.1, hessian_power=2.0)
    with pytest.raises(jaxhvp.HVPError, match=r"spatial_averaging given to adahessian"):
        jo.adahessian(0.1, spatial_averaging="NCHW")
    with pytest.raises(jaxhvp.HVPError, match=r"eps given to scale_by_sophia"):
        jo.scale_by_sophia(eps=0.0)
    with pytest.raises(jaxhvp.HVPError, match=r"b2 given to scale_by_adahessian"):
        jo.scale_by_adahessian(b2=-0.1)


def test_bad_extra_arguments_are_named():
    params = jnp.ones(2)
    opt = jo.sophia(0.1)
    state = opt.init(params)
    with pytest.raises(TypeError, match=r"needs the current parameters"):
        opt.update(params, state, obj_fn=lambda p: p.sum())
    with pytest.raises(TypeError, match=r"obj_fn given to sophia's update must be a function"):
        opt.update(params, state, params, obj_fn=3.0)
    with pytest.raises(jaxhvp.HVPError, match=r"obj_fn .* one floating scalar.*shape \(2,\)"):
        opt.update(params, state, params, obj_fn=lambda p: p**2)
    opt = jo.sophia(0.1, estimator="gauss-newton-bartlett")
    with pytest.raises(jaxhvp.HVPError, match=r"model_fn .* logits with the classes"):
        opt.update(params, opt.init(params), params, model_fn=lambda p: p.sum())


# --- training runs against a tuned Adam -------------------------------------------------------
#
# Three small classification problems, 512 points each, fresh shuffled batches of 64, 20 epochs
# (160 jitted steps, the same number of minibatch gradients for every method), float32:
#   "spirals": a 2-32-32-2 tanh MLP on two interleaved spirals;
#   "mixture": a 32-32-10 tanh MLP on a 10-class Gaussian mixture in 32 features whose scales
#              run from 10**-1.5 to 10**1 (ill-conditioned inputs);
#   "deep":    a 2-16-16-16-16-2 tanh MLP on the spirals.
# Every method is an optax.chain run under jax.jit with a new batch closure each step. Adam,
# Sophia and AdaHessian sit behind optax.clip_by_global_norm(1.0); Hessian-free is chained
# alone (its damping controls the step, and its reduction ratio needs the true gradient).
# Fixed choices, made before the comparison: defaults everywhere, no weight decay, and for
# Sophia gamma=2, update_interval=1.
#
# Learning rates: a grid of 5 per method, the one with the lowest median final loss over
# tuning seeds 0, 1, 2 (other seeds than the ones below):
#   Adam, Sophia-H, Sophia-G:  3e-3 1e-2 3e-2 1e-1 3e-1
#   AdaHessian:                1e-2 3e-2 1e-1 3e-1 1
#   Hessian-free:              3e-2 1e-1 3e-1 1    3
# The tuning medians (final training loss) were, in grid order:
#   spirals  Adam 0.537 0.428 0.361 0.038 0.341    Sophia-H 0.532 0.302 0.036 0.461 1.51
#            Sophia-G 0.531 0.396 0.049 0.226 0.474 AdaHessian 0.594 0.541 0.416 0.086 0.015
#            Hessian-free 0.013 0.0001 0.0007 0.044 0.642
#   mixture  Adam 0.841 0.285 0.059 0.222 1.08     Sophia-H 0.966 0.368 0.246 0.879 2.63
#            Sophia-G 1.02 0.381 0.066 0.010 0.271  AdaHessian 1.57 1.03 0.449 0.127 0.059
#            Hessian-free 0.211 2.29 2.07 1.28 2.29
#   deep     Adam 0.489 0.411 0.026 0.176 0.705    Sophia-H 0.489 0.086 0.105 0.687 1.61
#            Sophia-G 0.443 0.251 0.177 0.513 0.699 AdaHessian 0.612 0.553 0.287 0.034 0.059
#            Hessian-free 0.012 0.0010 0.0005 0.164 0.792
# The comparisons below use (the other tuned rates are in the table of docs/optax.md):
TUNED = {  # (problem, method): learning rate
    ("spirals", "adam"): 1e-1,
    ("spirals", "hessian-free"): 1e-1,
    ("spirals", "sophia-hutchinson"): 3e-2,
    ("spirals", "adahessian"): 1.0,
    ("mixture", "adam"): 3e-2,
    ("mixture", "sophia-gauss-newton-bartlett"): 1e-1,
}
HELD_OUT_SEEDS = (100, 101, 102, 103, 104)  # each: the initialisation, shuffles, probes
POINTS, BATCH, EPOCHS = 512, 64, 20
DATA_SEED = 12345  # the data set of each problem is fixed


def spirals(key):
    """Two interleaved spirals of 256 points each, with a little noise; labels 0 and 1."""
    angle_key, noise_key = jax.random.split(key)
    half = POINTS // 2
    t = jnp.sqrt(jax.random.uniform(angle_key, (half,), jnp.float32)) * 3 * jnp.pi
    arm = jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], axis=1) / (3 * jnp.pi)
    noise = 0.03 * jax.random.normal(noise_key, (POINTS, 2), jnp.float32)
    y = jnp.concatenate([jnp.zeros(half, jnp.int32), jnp.ones(half, jnp.int32)])
    return jnp.concatenate([arm, -arm]) + noise, y


def mixture(key, classes=10, features=32):
    """A 10-class Gaussian mixture (means 0.5 * N(0, I), unit noise) in 32 features, feature
    ``j`` then multiplied by ``10**linspace(-1.5, 1, 32)[j]``."""
    means_key, labels_key, noise_key = jax.random.split(key, 3)
    means = 0.5 * jax.random.normal(means_key, (classes, features), jnp.float32)
    y = jax.random.randint(labels_key, (POINTS,), 0, classes)
    x = means[y] + jax.random.normal(noise_key, (POINTS, features), jnp.float32)
    return x * 10.0 ** jnp.linspace(-1.5, 1.0, features, dtype=jnp.float32), y.astype(jnp.int32)


PROBLEMS = {"spirals": (spirals, (2, 32, 32, 2)), "mixture": (mixture, (32, 32, 10))}


def init_classifier(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        {"w": jax.random.normal(k, (a, b), jnp.float32) / jnp.sqrt(a), "b": jnp.zeros(b, "float32")}
        for k, (a, b) in zip(keys, itertools.pairwise(sizes))
    ]


def classifier(params, x):
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def logits_loss(logits, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def optimiser(method, learning_rate, key):
    """The method as an optax.chain (see the comment above for the fixed choices)."""
    clip = optax.clip_by_global_norm(1.0)
    sophia = functools.partial(jo.sophia, gamma=2.0, update_interval=1, weight_decay=0.0)
    if method == "adam":
        return optax.chain(clip, optax.adam(learning_rate))
    if method == "sophia-hutchinson":
        return optax.chain(clip, sophia(learning_rate, key=key))
    if method == "sophia-gauss-newton-bartlett":
        return optax.chain(clip, sophia(learning_rate, estimator="gauss-newton-bartlett", key=key))
    if method == "adahessian":
        return optax.chain(clip, jo.adahessian(learning_rate, key=key))
    assert method == "hessian-free"
    return optax.chain(jo.hessian_free(learning_rate))


@functools.cache
def problem_data(problem):
    """The problem's fixed data set, from ``DATA_SEED``."""
    return PROBLEMS[problem][0](jax.random.key(DATA_SEED))


@functools.partial(jax.jit, static_argnames="method")
def train(method, learning_rate, params, probe_key, x, y, batches):
    """The loss over all points before and after one jitted ``lax.scan`` of steps over the
    rows of ``batches`` (indices into ``x`` and ``y``). Each step builds the batch's
    closures, and optax.chain passes them on to the transformations that take them (Adam
    and the clip drop them)."""
    opt = optimiser(method, learning_rate, probe_key)

    def step(carry, batch):
        params, state = carry
        xb, yb = x[batch], y[batch]
        obj_fn = lambda p: logits_loss(classifier(p, xb), yb)  # noqa: E731
        updates, state = opt.update(
            jax.grad(obj_fn)(params),
            state,
            params,
            obj_fn=obj_fn,
            model_fn=lambda p: classifier(p, xb),
            loss_fn=lambda logits: logits_loss(logits, yb),
        )
        return (optax.apply_updates(params, updates), state), None

    start = logits_loss(classifier(params, x), y)
    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), batches)
    return start, logits_loss(classifier(params, x), y)


@functools.cache
def held_out_losses(problem, method):
    """The initial and final training losses on the held-out seeds, as numpy arrays. Each
    seed draws the initialisation, the probes or sampled labels, and EPOCHS shuffles."""
    x, y = problem_data(problem)
    losses = []
    for seed in HELD_OUT_SEEDS:
        init_key, probe_key = jax.random.split(jax.random.key(seed))
        params = init_classifier(init_key, PROBLEMS[problem][1])
        order = np.random.default_rng(seed)
        batches = np.concatenate([order.permutation(POINTS) for _ in range(EPOCHS)])
        batches = batches.reshape(-1, BATCH)
        out = train(method, TUNED[problem, method], params, probe_key, x, y, batches)
        losses.append(jax.device_get(out))
    return tuple(np.array(a, np.float64) for a in zip(*losses))


# Where a method beats the tuned Adam: median final loss over held-out seeds, equal epochs.
# Over 40 held-out runs (seeds 100 to 119, two draws of shuffles each) these two wins hold
# by a factor of 4 or more. The others: on the deep MLP AdaHessian's and Hessian-free's
# medians (0.044, 0.050) against Adam's 0.056 are within the seed-to-seed spread (each draw
# of 20 seeds orders them differently), so no win is asserted there; everything else ends
# above Adam over the 40 runs (docs/optax.md), AdaHessian on the spirals included (0.043
# against 0.033), though its median on the five HELD_OUT_SEEDS alone is the lower one.
WINS = [
    ("hessian-free", "spirals"),
    ("sophia-gauss-newton-bartlett", "mixture"),
]


@pytest.mark.parametrize(("method", "problem"), WINS, ids=[f"{m}-{p}" for m, p in WINS])
def test_training_beats_tuned_adam(method, problem):
    """In the same 20 epochs, the method's median final training loss over the held-out
    seeds is below that of Adam at its own tuned learning rate."""
    (_, losses), (_, adam) = held_out_losses(problem, method), held_out_losses(problem, "adam")
    assert np.isfinite(losses).all()
    assert np.median(losses) < np.median(adam), f"{method} {losses}, Adam {adam} ({problem})"


# Methods that beat the tuned Adam on none of the problems (the numbers are in docs/optax.md):
# they train, every held-out run ends below its initial loss (about 0.7), the median below:
NO_WIN = {"sophia-hutchinson": 0.1, "adahessian": 0.1}


@pytest.mark.parametrize("method", list(NO_WIN))
def test_training_without_a_win_still_trains(method):
    """On the spirals in 20 epochs every held-out run lowers the loss and the median ends
    below 0.1 (from about 0.7). Over 40 held-out runs the tuned Adam's median is lower
    (0.033, against 0.061 for Sophia-H and 0.043 for AdaHessian)."""
    start, losses = held_out_losses("spirals", method)
    assert np.isfinite(losses).all()
    np.testing.assert_array_less(losses, start)
    assert np.median(losses) < NO_WIN[method], f"{method}: {losses}"
