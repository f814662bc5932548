"""GGN, Fisher (exact and Monte Carlo) and empirical Fisher operators, and the diagonal
estimators, against dense references built with jax.jacfwd / jax.hessian / jax.jacrev.

Each reference is formed from its textbook definition on a small model in float64:
``G = J^T H_L J`` with ``J`` and ``H_L`` dense, the Fisher as the expectation over every
label of the outer product of the loss gradient, the empirical Fisher from a stack of
per-example gradients.
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
import jaxhvp.spectrum

N, D, HIDDEN, C = 6, 3, 4, 3  # examples, features, hidden units, classes (or outputs)
SIZE = D * HIDDEN + HIDDEN + HIDDEN * C  # parameters of the MLP: 28


def _data(seed=0, classes=C):
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (N, D))
    y = jax.random.randint(ky, (N,), 0, classes)
    return x, y


def _params(seed=1, out=C):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return {
        "w1": jax.random.normal(k1, (D, HIDDEN)) / 2,
        "b1": jax.random.normal(k2, (HIDDEN,)) / 4,
        "w2": jax.random.normal(k3, (HIDDEN, out)),
    }


def mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def _dense_jacobian(model, params):
    flat, unravel = ravel_pytree(params)
    return jax.jacfwd(lambda f: ravel_pytree(model(unravel(f)))[0])(flat)


def _dense_ggn(model, loss, params):
    jac = _dense_jacobian(model, params)
    out = model(params)
    out_flat, out_unravel = ravel_pytree(out)
    h_loss = jax.hessian(lambda o: loss(out_unravel(o)))(out_flat)
    return jac.T @ h_loss @ jac


def _flat(tree):
    return ravel_pytree(tree)[0]


def _vector(params, seed=7):
    flat, unravel = ravel_pytree(params)
    return unravel(jax.random.normal(jax.random.key(seed), flat.shape, flat.dtype))


# --- the matching losses of the likelihoods, as a user writes them with optax ------------


def _labels_for(likelihood, y, out_shape):
    if likelihood == "categorical":
        return y
    values = jax.random.uniform(jax.random.key(3), out_shape)
    return values if likelihood == "gaussian" else (values > 0.5).astype(values.dtype)


MATCHING_LOSS = {
    "categorical": lambda f, t: optax.softmax_cross_entropy_with_integer_labels(f, t).mean(),
    "gaussian": lambda f, t: jnp.mean((f - t) ** 2),
    "bernoulli": lambda f, t: optax.sigmoid_binary_cross_entropy(f, t).mean(),
}
LIKELIHOODS = tuple(MATCHING_LOSS)


# --- the GGN ------------------------------------------------------------------------------


def test_ggn_is_the_dense_jt_hl_j_over_pytree_outputs():
    x, y = _data()
    params = _params()

    def model(p):  # outputs a dict: the GGN takes any output pytree
        out = mlp(p, x)
        return {"logits": out, "aux": jnp.sin(out[:, 0])}

    def loss(out):
        ce = optax.softmax_cross_entropy_with_integer_labels(out["logits"], y).mean()
        return ce + 0.3 * jnp.sum(out["aux"] ** 2)

    op = jaxhvp.ggn_operator(model, loss, params)
    expected = _dense_ggn(model, loss, params)
    np.testing.assert_allclose(op.as_matrix(), expected, rtol=1e-10, atol=1e-12)
    assert op.kind == "ggn" and op.psd
    np.testing.assert_allclose(op.value, loss(model(params)), rtol=1e-12)
    assert_trees_close(op.grad, jax.grad(lambda p: loss(model(p)))(params))
    v = _vector(params)
    assert_trees_close(op @ v, ravel_pytree(params)[1](expected @ _flat(v)))


def test_ggn_equals_the_hessian_for_a_linear_model():
    x, _ = _data()
    t = jax.random.normal(jax.random.key(4), (N, C))
    w = jax.random.normal(jax.random.key(5), (D, C))

    def loss(w):
        return jnp.sum(jnp.cosh(x @ w - t))  # convex, not quadratic

    op = jaxhvp.ggn_operator(lambda w: x @ w, lambda f: jnp.sum(jnp.cosh(f - t)), w)
    np.testing.assert_allclose(
        op.as_matrix(), jax.hessian(loss)(w).reshape(D * C, D * C), rtol=1e-10
    )


def test_gnvp_matches_the_dense_ggn_for_tuple_inputs():
    x, y = _data()
    w1, w2 = _params()["w1"], _params()["w2"]

    def model(a, b):
        return jnp.tanh(x @ a) @ b

    def loss(out):
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    v = (jnp.ones_like(w1), jnp.arange(w2.size, dtype=w2.dtype).reshape(w2.shape))
    value, product = jaxhvp.gnvp(model, loss, (w1, w2), v)
    dense = _dense_ggn(lambda p: model(*p), loss, (w1, w2))
    assert isinstance(product, tuple) and len(product) == 2
    np.testing.assert_allclose(_flat(product), dense @ _flat(v), rtol=1e-10)
    np.testing.assert_allclose(value, loss(model(w1, w2)), rtol=1e-12)
    # the same under jit, vmap over vectors, and with jit=False
    jitted = jax.jit(lambda a, b, v: jaxhvp.gnvp(model, loss, (a, b), v))(w1, w2, v)
    assert_trees_close(jitted[1], product)
    assert_trees_close(jaxhvp.gnvp(model, loss, (w1, w2), v, jit=False)[1], product)
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 2 * a]), v)
    batched = jax.vmap(lambda u: jaxhvp.gnvp(model, loss, (w1, w2), u)[1])(stacked)
    assert_trees_close(
        jax.tree_util.tree_map(lambda a: a[1], batched), (2 * product[0], 2 * product[1])
    )


def test_ggn_over_batches_is_the_mean_of_the_batch_ggns():
    x, y = _data()
    params = _params()
    batches = (x.reshape(3, 2, D), y.reshape(3, 2))

    def model(p, batch):
        return mlp(p, batch[0])

    def loss(out, batch):
        return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()

    op = jaxhvp.ggn_operator(model, loss, params, batches=batches)
    per_batch = [
        _dense_ggn(lambda p, b=b: model(p, b), lambda o, b=b: loss(o, b), params)
        for b in (jax.tree_util.tree_map(lambda a, i=i: a[i], batches) for i in range(3))
    ]
    np.testing.assert_allclose(op.as_matrix(), sum(per_batch) / 3, rtol=1e-10, atol=1e-13)
    # equal batches: the mean of the batch GGNs is the GGN of the mean loss on all data
    whole = _dense_ggn(lambda p: mlp(p, x), lambda o: loss(o, (x, y)), params)
    np.testing.assert_allclose(op.as_matrix(), whole, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(op.value, loss(mlp(params, x), (x, y)), rtol=1e-12)


# --- the Fisher ---------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_exact_fisher_is_the_ggn_of_the_matching_loss(likelihood):
    x, y = _data()
    params = _params()
    targets = _labels_for(likelihood, y, (N, C))
    fisher = jaxhvp.fisher_operator(lambda p: mlp(p, x), params, likelihood=likelihood)
    ggn = _dense_ggn(lambda p: mlp(p, x), lambda f: MATCHING_LOSS[likelihood](f, targets), params)
    np.testing.assert_allclose(fisher.as_matrix(), ggn, rtol=1e-10, atol=1e-13)
    assert fisher.kind == "fisher" and fisher.value is None and fisher.psd
    total = jaxhvp.fisher_operator(
        lambda p: mlp(p, x), params, likelihood=likelihood, reduction="sum"
    )
    terms = N if likelihood == "categorical" else N * C
    np.testing.assert_allclose(total.as_matrix(), terms * ggn, rtol=1e-10, atol=1e-12)


def _expected_fisher(likelihood, model, params):
    """``mean over terms of J^T E_y[g g^T] J``, the expectation by enumerating every label."""
    jac = _dense_jacobian(model, params)  # (N * C, n)
    f = model(params)
    blocks = []
    for row in f:  # one example at a time: enumerate its labels
        if likelihood == "categorical":
            p = jax.nn.softmax(row)
            outer = sum(p[c] * jnp.outer(p - jnp.eye(C)[c], p - jnp.eye(C)[c]) for c in range(C))
        else:  # independent Bernoulli outputs: enumerate every label vector
            s = jax.nn.sigmoid(row)
            outer = jnp.zeros((C, C))
            for labels in itertools.product([0.0, 1.0], repeat=C):
                y = jnp.array(labels)
                prob = jnp.prod(jnp.where(y == 1, s, 1 - s))
                outer = outer + prob * jnp.outer(s - y, s - y)
        blocks.append(outer)
    inner = jax.scipy.linalg.block_diag(*blocks)
    terms = N if likelihood == "categorical" else N * C
    return jac.T @ inner @ jac / terms


@pytest.mark.parametrize("likelihood", ["categorical", "bernoulli"])
def test_exact_fisher_is_the_expectation_over_labels(likelihood):
    x, _ = _data()
    params = _params()
    op = jaxhvp.fisher_operator(lambda p: mlp(p, x), params, likelihood=likelihood)
    expected = _expected_fisher(likelihood, lambda p: mlp(p, x), params)
    np.testing.assert_allclose(op.as_matrix(), expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_monte_carlo_fisher_converges_to_the_exact_one(likelihood):
    x, _ = _data()
    params = _params()
    exact = jaxhvp.fisher_operator(lambda p: mlp(p, x), params, likelihood=likelihood).as_matrix()

    def error(samples, seed):
        op = jaxhvp.fisher_operator(
            lambda p: mlp(p, x),
            params,
            likelihood=likelihood,
            mc_samples=samples,
            key=jax.random.key(seed),
        )
        return np.linalg.norm(op.as_matrix() - exact) / np.linalg.norm(exact)

    few = np.mean([error(4, seed) for seed in range(4)])
    many = np.mean([error(4096, seed) for seed in range(4)])
    assert many < few / 10  # error ~ 1/sqrt(samples): 32x fewer in expectation
    assert many < 0.1


def test_monte_carlo_fisher_is_one_fixed_symmetric_psd_matrix():
    x, _ = _data()
    params = _params()
    op = jaxhvp.fisher_operator(
        lambda p: mlp(p, x), params, likelihood="categorical", mc_samples=2, key=jax.random.key(0)
    )
    assert op.kind == "fisher_mc" and op.psd
    matrix = op.as_matrix()
    np.testing.assert_allclose(matrix, op.as_matrix(), rtol=0, atol=0)  # same samples
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-13)
    assert np.linalg.eigvalsh(matrix).min() > -1e-12
    v = _vector(params)
    assert_trees_close(op @ v, ravel_pytree(params)[1](matrix @ _flat(v)))


# --- the empirical Fisher -----------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empirical_fisher_is_the_mean_of_per_example_gradient_outer_products(reduction):
    x, y = _data()
    params = _params()

    def per_example(p):
        return optax.softmax_cross_entropy_with_integer_labels(mlp(p, x), y)

    flat, unravel = ravel_pytree(params)
    grads = jax.jacrev(lambda f: per_example(unravel(f)))(flat)  # (N, n): one row per example
    expected = grads.T @ grads / (N if reduction == "mean" else 1)
    op = jaxhvp.empirical_fisher_operator(
        lambda p: mlp(p, x),
        lambda out: optax.softmax_cross_entropy_with_integer_labels(out, y),
        params,
        reduction=reduction,
    )
    np.testing.assert_allclose(op.as_matrix(), expected, rtol=1e-10, atol=1e-13)
    reduce = jnp.mean if reduction == "mean" else jnp.sum
    np.testing.assert_allclose(op.value, reduce(per_example(params)), rtol=1e-12)
    assert_trees_close(op.grad, jax.grad(lambda p: reduce(per_example(p)))(params))


def test_empirical_fisher_over_batches_with_pytree_outputs():
    x, y = _data()
    params = _params()
    batches = {"x": x.reshape(2, 3, D), "y": y.reshape(2, 3)}

    def model(p, batch):
        out = mlp(p, batch["x"])
        return (out, out[:, :1] ** 2)

    def losses(out, batch):
        ce = optax.softmax_cross_entropy_with_integer_labels(out[0], batch["y"])
        return ce + out[1][:, 0]

    flat, unravel = ravel_pytree(params)
    grads = jax.jacrev(lambda f: losses(model(unravel(f), {"x": x}), {"y": y}))(flat)
    op = jaxhvp.empirical_fisher_operator(model, losses, params, batches=batches)
    np.testing.assert_allclose(op.as_matrix(), grads.T @ grads / N, rtol=1e-10, atol=1e-13)


# --- diagonals ----------------------------------------------------------------------------


@functools.cache  # built once (in float64: every test runs with x64) for the module's tests
def _operators():
    """One of each kind on the same small problem, and its dense matrix."""
    x, y = _data()
    params = _params()

    def model(p):
        return mlp(p, x)

    def loss(out):
        return optax.softmax_cross_entropy_with_integer_labels(out, y).mean()

    hessian = jax.hessian(lambda f: loss(model(ravel_pytree(params)[1](f))))(_flat(params))
    ggn = _dense_ggn(model, loss, params)
    ops = {
        "hessian": (jaxhvp.hessian_operator(lambda p: loss(model(p)), params), hessian),
        "ggn": (jaxhvp.ggn_operator(model, loss, params), ggn),
        "fisher": (jaxhvp.fisher_operator(model, params, likelihood="categorical"), ggn),
        "damped": (
            jaxhvp.hessian_operator(lambda p: loss(model(p)), params) + 0.5,
            hessian + 0.5 * np.eye(len(hessian)),
        ),
        "scaled": (3.0 * jaxhvp.ggn_operator(model, loss, params), 3.0 * ggn),
        "sum": (
            jaxhvp.ggn_operator(model, loss, params)
            + jaxhvp.hessian_operator(lambda p: loss(model(p)), params),
            ggn + hessian,
        ),
    }
    return params, ops


@pytest.mark.parametrize("method", ["hutchinson", "diag++"])
def test_stochastic_diagonal_is_within_its_standard_error(method):
    params, ops = _operators()
    for name in ("hessian", "fisher", "sum"):  # the estimators only see the interface
        op, dense = ops[name]
        est = jaxhvp.spectrum.diagonal(op, key=jax.random.key(2), num_probes=60, method=method)
        value, stderr = _flat(est.value), _flat(est.stderr)
        error = np.abs(value - np.diag(dense))
        assert jax.tree_util.tree_structure(est.value) == jax.tree_util.tree_structure(params)
        # per entry within 5 standard errors (plus rounding where the error is exactly 0)
        assert np.all(error <= 5 * stderr + 1e-10), (name, np.max(error / (stderr + 1e-300)))
        assert int(est.num_matvecs) == 60


def test_hutchinson_standard_error_matches_the_spread_over_keys():
    _, ops = _operators()
    op, dense = ops["ggn"]
    estimates = [
        _flat(jaxhvp.spectrum.diagonal(op, key=jax.random.key(s), num_probes=20).value)
        for s in range(40)
    ]
    reported = _flat(jaxhvp.spectrum.diagonal(op, key=jax.random.key(0), num_probes=20).stderr)
    spread = np.std(estimates, axis=0, ddof=1)
    mask = spread > 1e-8
    ratio = np.median(reported[mask] / spread[mask])
    assert 0.6 < ratio < 1.6
    np.testing.assert_allclose(
        np.mean(estimates, axis=0), np.diag(dense), atol=4 * spread.max() / np.sqrt(40)
    )


def test_exact_diagonal_of_every_operator():
    _, ops = _operators()
    for name, (op, dense) in ops.items():
        est = jaxhvp.spectrum.diagonal(op, method="exact")
        np.testing.assert_allclose(
            _flat(est.value), np.diag(dense), rtol=1e-10, atol=1e-13, err_msg=name
        )
        assert np.all(_flat(est.stderr) == 0)
    # a GGN with fewer outputs (6 x 3) than parameters (28) is done in output space
    ggn = ops["ggn"][0]
    assert ggn.exact_diagonal_cost() == N * C < SIZE
    assert int(jaxhvp.spectrum.diagonal(ops["hessian"][0], method="exact").num_matvecs) == SIZE
    chunked = jaxhvp.spectrum.diagonal(ops["hessian"][0], method="exact", probe_batch_size=4)
    np.testing.assert_allclose(_flat(chunked.value), np.diag(ops["hessian"][1]), rtol=1e-10)


def test_exact_ggn_diagonal_in_output_space_over_batches_with_indefinite_loss():
    x, y = _data()
    params = {"w": jax.random.normal(jax.random.key(9), (D, 4))}
    batches = (x.reshape(3, 2, D), y.reshape(3, 2))

    def model(p, batch):  # 2 outputs per batch (6 in all), 12 parameters
        return jnp.sum(jnp.sin(batch[0] @ p["w"]), axis=1, keepdims=True)

    def loss(out, batch):
        return jnp.sum(jnp.sin(out) * batch[1][:, None])  # not convex: C indefinite

    op = jaxhvp.ggn_operator(model, loss, params, batches=batches, loss_is_convex=False)
    assert op.exact_diagonal_cost() == 6 and not op.psd
    dense = op.as_matrix()
    np.testing.assert_allclose(_flat(op.exact_diagonal()), np.diag(dense), rtol=1e-10, atol=1e-13)


def test_diagonal_of_a_plain_matvec_and_its_errors():
    a = jnp.array([[2.0, 1.0], [1.0, 3.0]])
    est = jaxhvp.spectrum.diagonal(lambda v: a @ v, like=jnp.zeros(2), method="exact")
    np.testing.assert_allclose(est.value, [2.0, 3.0])
    with pytest.raises(TypeError, match="needs key= and num_probes="):
        jaxhvp.spectrum.diagonal(lambda v: a @ v, like=jnp.zeros(2))
    with pytest.raises(jaxhvp.HVPError, match="uses no probes"):
        jaxhvp.spectrum.diagonal(lambda v: a @ v, like=jnp.zeros(2), method="exact", num_probes=3)
    with pytest.raises(jaxhvp.HVPError, match="method given to diagonal must be one of"):
        jaxhvp.spectrum.diagonal(lambda v: a @ v, like=jnp.zeros(2), method="xdiag")
    with pytest.raises(jaxhvp.HVPError, match="num_probes given to diagonal must be an int >= 4"):
        jaxhvp.spectrum.diagonal(
            lambda v: a @ v, like=jnp.zeros(2), key=jax.random.key(0), num_probes=3, method="diag++"
        )


# --- one interface ------------------------------------------------------------------------


def test_every_operator_has_the_whole_interface():
    import lineax
    import scipy.sparse.linalg

    params, ops = _operators()
    v = _vector(params)
    flat_v = _flat(v)
    for name, (op, dense) in ops.items():
        expected = dense @ flat_v
        assert isinstance(op, jaxhvp.Operator), name
        for product in (op(v), op @ v, op.mv(v), jax.jit(lambda o, u: o @ u)(op, v)):
            np.testing.assert_allclose(
                _flat(product), expected, rtol=1e-10, atol=1e-12, err_msg=name
            )
        stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, -a, 2 * a]), v)
        for batch_size in (None, 2):
            rows = op.matmat(stacked, batch_size=batch_size)
            np.testing.assert_allclose(
                _flat(jax.tree_util.tree_map(lambda a: a[2], rows)),
                2 * expected,
                rtol=1e-10,
                atol=1e-12,
            )
        np.testing.assert_allclose(op.as_matrix(), dense, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(
            op.as_scipy().matvec(np.asarray(flat_v)), expected, rtol=1e-10, atol=1e-12
        )
        assert isinstance(op.as_scipy(), scipy.sparse.linalg.LinearOperator)
        tags = op.as_lineax().tags
        assert lineax.symmetric_tag in tags
        assert (lineax.positive_semidefinite_tag in tags) == op.psd, name

        # crosses jit and rides in a while_loop as a pytree
        def loop(o, u):
            return jax.lax.fori_loop(0, 2, lambda i, w: o @ w, u)

        twice = jax.jit(loop)(op, v)
        np.testing.assert_allclose(
            _flat(twice), dense @ (dense @ flat_v), rtol=1e-9, atol=1e-11, err_msg=name
        )
    assert not ops["hessian"][0].psd and not ops["damped"][0].psd  # a Hessian cannot know
    assert ops["ggn"][0].psd and ops["scaled"][0].psd and not ops["sum"][0].psd


def test_psd_operators_solve_with_lineax_cg_and_jax_cg():
    import lineax

    params, ops = _operators()
    op = ops["ggn"][0] + 0.1  # G + 0.1 I: positive definite
    dense = ops["ggn"][1] + 0.1 * np.eye(SIZE)
    b = _vector(params)
    solution = lineax.linear_solve(op.as_lineax(), b, lineax.CG(rtol=1e-12, atol=1e-12)).value
    np.testing.assert_allclose(_flat(solution), np.linalg.solve(dense, _flat(b)), rtol=1e-7)
    x, _ = jax.scipy.sparse.linalg.cg(op, b, tol=1e-12)
    np.testing.assert_allclose(_flat(x), np.linalg.solve(dense, _flat(b)), rtol=1e-7)
    damped_hessian = ops["hessian"][0] + 10.0  # asserted PSD by the user
    assert lineax.positive_semidefinite_tag in damped_hessian.as_lineax(psd=True).tags


def test_spectrum_estimators_accept_any_operator():
    _, ops = _operators()
    op, dense = ops["ggn"]
    top = jaxhvp.spectrum.eigenvalues(op, key=jax.random.key(0), k=2)
    np.testing.assert_allclose(np.sort(top.values), np.linalg.eigvalsh(dense)[-2:], rtol=1e-8)
    damped, dense_damped = ops["damped"]
    trace = jaxhvp.spectrum.trace(damped, key=jax.random.key(0), num_probes=93)
    # a sketch of all 28 dimensions: exact
    np.testing.assert_allclose(trace.value, np.trace(dense_damped), rtol=1e-8)
    density = jaxhvp.spectrum.density(ops["fisher"][0], key=jax.random.key(0), num_probes=2)
    assert np.isfinite(np.asarray(density.density)).all()


def test_operator_algebra_and_its_errors():
    _, ops = _operators()
    op = ops["ggn"][0]
    assert isinstance(op + 1.0, jaxhvp.operators.DampedOperator)
    assert isinstance(1.0 + op, jaxhvp.operators.DampedOperator)
    assert isinstance(op * 2.0, jaxhvp.operators.ScaledOperator)
    assert (op + 1.0).value is op.value and (op + 1.0).grad is op.grad
    assert (op + -1.0).psd is False and (op * -1.0).psd is False
    seen = []  # under jit the damping is traced: not known to be >= 0, so not tagged PSD
    jax.jit(lambda o, lam: seen.append((o + lam).psd) or lam)(op, 1.0)
    assert seen == [False]
    other = jaxhvp.hessian_operator(lambda w: jnp.sum(w**2), jnp.ones(3))
    with pytest.raises(jaxhvp.HVPError, match="Only operators on the same vectors can be added"):
        op + other
    with pytest.raises(TypeError):
        op + "a"


def test_eager_products_read_fresh_data_and_reuse_kernels():
    params = _params()
    x, y = _data()

    def build(inputs):
        return jaxhvp.ggn_operator(
            lambda p: mlp(p, inputs),
            lambda out: optax.softmax_cross_entropy_with_integer_labels(out, y).mean(),
            params,
        )

    v = _vector(params)
    first = build(x) @ v
    jaxhvp.cache_clear()
    build(x) @ v
    misses = jaxhvp.cache_info().misses
    second = build(2 * x) @ v  # a fresh closure over new data: same kernels, new numbers
    assert jaxhvp.cache_info().misses == misses
    expected = _dense_ggn(
        lambda p: mlp(p, 2 * x),
        lambda o: optax.softmax_cross_entropy_with_integer_labels(o, y).mean(),
        params,
    ) @ _flat(v)
    np.testing.assert_allclose(_flat(second), expected, rtol=1e-10)
    assert not np.allclose(_flat(first), _flat(second))
    # the same for a Hessian over batches built from fresh closures
    batches = (x.reshape(2, 3, D), y.reshape(2, 3))

    def batch_hessian(scale):
        def loss(p, batch):
            out = mlp(p, scale * batch[0])
            return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()

        return jaxhvp.hessian_operator(loss, params, batches=batches)

    batch_hessian(jnp.asarray(1.0)) @ v
    misses = jaxhvp.cache_info().misses
    batch_hessian(jnp.asarray(2.0)) @ v
    assert jaxhvp.cache_info().misses == misses


def test_hessian_operator_over_batches_follows_the_tuple_rule():
    x, y = _data()
    w1, w2 = _params()["w1"], _params()["w2"]
    batches = (x.reshape(2, 3, D), y.reshape(2, 3))

    def loss(a, b, batch):
        out = jnp.tanh(batch[0] @ a) @ b
        return optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()

    op = jaxhvp.hessian_operator(loss, (w1, w2), batches=batches)
    assert op.is_tuple
    dense = jax.hessian(lambda f: loss(*ravel_pytree((w1, w2))[1](f), (x, y)))(_flat((w1, w2)))
    np.testing.assert_allclose(op.as_matrix(), dense, rtol=1e-10, atol=1e-13)
    with pytest.raises(jaxhvp.HVPError, match="has_aux=True only without batches"):
        jaxhvp.hessian_operator(loss, (w1, w2), batches=batches, has_aux=True)
    with pytest.raises(jaxhvp.HVPError, match="does not time modes"):
        jaxhvp.hessian_operator(loss, (w1, w2), batches=batches, mode="auto")


# --- errors -------------------------------------------------------------------------------


def test_bad_arguments_get_clear_errors():
    x, y = _data()
    params = _params()

    def model(p):
        return mlp(p, x)

    with pytest.raises(jaxhvp.HVPError, match="likelihood given to fisher_operator must be one of"):
        jaxhvp.fisher_operator(model, params, likelihood="poisson")
    with pytest.raises(jaxhvp.HVPError, match="needs key="):
        jaxhvp.fisher_operator(model, params, likelihood="categorical", mc_samples=3)
    with pytest.raises(jaxhvp.HVPError, match="needs mc_samples"):
        jaxhvp.fisher_operator(model, params, likelihood="categorical", key=jax.random.key(0))
    with pytest.raises(
        jaxhvp.HVPError, match="mc_samples given to fisher_operator must be an int >= 1"
    ):
        jaxhvp.fisher_operator(
            model, params, likelihood="categorical", mc_samples=0, key=jax.random.key(0)
        )
    with pytest.raises(jaxhvp.HVPError, match="reduction given to fisher_operator must be one of"):
        jaxhvp.fisher_operator(model, params, likelihood="gaussian", reduction="none")
    with pytest.raises(jaxhvp.HVPError, match=r"must return one loss per example, shape \(6,\)"):
        jaxhvp.empirical_fisher_operator(model, lambda out: out.mean(), params)
    with pytest.raises(
        jaxhvp.HVPError, match="loss given to ggn_operator must return a single value"
    ):
        jaxhvp.ggn_operator(model, lambda out: out, params)
    with pytest.raises(jaxhvp.HVPError, match="logits with the classes on the last axis"):
        jaxhvp.fisher_operator(
            lambda p: jnp.sum(model(p)), params, likelihood="categorical"
        ).as_matrix()
    with pytest.raises(TypeError, match="must be callable"):
        jaxhvp.ggn_operator(model, "mse", params)
    with pytest.raises(jaxhvp.HVPError, match="same leading length"):
        jaxhvp.ggn_operator(
            lambda p, b: mlp(p, b[0]), lambda o, b: o.sum(), params, batches=(x, y[:3])
        )


# --- curvature in the optimisers ----------------------------------------------------------


def _logistic():
    xs = jax.random.normal(jax.random.key(0), (40, 3))
    ys = (xs @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(xs.dtype)

    def nll(out, y):
        return jnp.mean(jnp.logaddexp(0.0, out) - y * out)

    def fun(w, xs, ys):
        return nll(xs @ w["w"] + w["b"], ys) + 1e-3 * w["w"] @ w["w"]

    def gauss_newton(w, xs, ys):  # exact for logistic regression: the GGN is the Hessian
        model = lambda p: xs @ p["w"] + p["b"]  # noqa: E731
        ridge = jaxhvp.hessian_operator(lambda p: 1e-3 * p["w"] @ p["w"], w)
        return jaxhvp.ggn_operator(model, lambda out: nll(out, ys), w) + ridge

    w0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    return fun, gauss_newton, w0, (xs, ys)


@pytest.mark.parametrize("method", ["trust-ncg", "newton-cg"])
def test_minimize_with_a_gauss_newton_curvature(method):
    fun, gauss_newton, w0, args = _logistic()
    hessian = jaxhvp.minimize(fun, w0, args, method=method, tol=1e-10)
    ggn = jaxhvp.minimize(fun, w0, args, method=method, tol=1e-10, curvature=gauss_newton)
    assert bool(ggn.success) and int(ggn.nit) == int(hessian.nit)
    assert_trees_close(ggn.x, hessian.x, rtol=1e-8, atol=1e-8)
    assert int(ggn.nhev) > 0


def test_step_functions_with_a_curvature_under_jit():
    fun, gauss_newton, w0, args = _logistic()
    optimum = jaxhvp.minimize(fun, w0, args, method="trust-ncg", tol=1e-12).x
    for init, step in (
        (jaxhvp.trust_ncg_init(w0), jaxhvp.trust_ncg_step),
        (jaxhvp.newton_cg_init(w0, damping=1e-4), jaxhvp.newton_cg_step),
    ):
        run = jax.jit(lambda p, s, step=step: step(fun, p, s, *args, curvature=gauss_newton))
        params, state = w0, init
        for _ in range(15):
            params, state, _ = run(params, state)
        assert_trees_close(params, optimum, rtol=1e-6, atol=1e-6)


def test_curvature_errors_name_the_argument():
    fun, gauss_newton, w0, args = _logistic()
    with pytest.raises(jaxhvp.HVPError, match="Give hessp or curvature, not both"):
        jaxhvp.minimize(
            fun, w0, args, method="trust-ncg", curvature=gauss_newton, hessp=lambda x, p, *a: p
        )
    with pytest.raises(TypeError, match="curvature must return a jaxhvp operator"):
        jaxhvp.minimize(fun, w0, args, method="trust-ncg", curvature=lambda w, *a: w)
    with pytest.raises(jaxhvp.HVPError, match="with the structure of x0") as e:
        jaxhvp.minimize(
            fun,
            w0,
            args,
            method="trust-ncg",
            curvature=lambda w, *a: jaxhvp.hessian_operator(jnp.sum, w["w"]),
        )
    assert "x0 is a dict but op.like is an array" in str(e.value)
    assert "PyTreeDef" not in str(e.value)
    with pytest.raises(TypeError, match="curvature must be callable"):
        jaxhvp.trust_ncg_step(fun, w0, jaxhvp.trust_ncg_init(w0), *args, curvature=3)


def test_every_operator_restricts_to_a_block():
    params, ops = _operators()
    flat, unravel = ravel_pytree(params)
    marker = unravel(jnp.arange(flat.size, dtype=flat.dtype))
    index = np.concatenate([np.ravel(marker["b1"]), np.ravel(marker["w2"])]).astype(int)
    for name, (op, dense) in ops.items():
        block = op.block(lambda p: (p["b1"], p["w2"]))
        assert isinstance(block, jaxhvp.Operator) and block.is_tuple and block.psd == op.psd
        np.testing.assert_allclose(
            block.as_matrix(), dense[np.ix_(index, index)], rtol=1e-10, atol=1e-13, err_msg=name
        )
        if op.grad is not None:
            assert_trees_close(block.grad, (op.grad["b1"], op.grad["w2"]))
    with pytest.raises(jaxhvp.HVPError, match="picked the same leaf more than once"):
        ops["ggn"][0].block(lambda p: (p["w2"], p["w2"]))


def test_operators_are_built_and_used_under_vmap_and_grad():
    x, y = _data()
    params = _params()
    v = _vector(params)
    stacked = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.5 * a]), params)

    def products(p):
        ggn = jaxhvp.ggn_operator(
            lambda q: mlp(q, x), lambda o: MATCHING_LOSS["categorical"](o, y), p
        )
        mc = jaxhvp.fisher_operator(
            lambda q: mlp(q, x), p, likelihood="categorical", mc_samples=2, key=jax.random.key(0)
        )
        return ggn @ v, mc @ v

    batched = jax.vmap(products)(stacked)
    for i in range(2):
        one = products(jax.tree_util.tree_map(lambda a, i=i: a[i], stacked))
        assert_trees_close(jax.tree_util.tree_map(lambda a, i=i: a[i], batched), one)
    # differentiable in the parameters: the derivative of <v, G(p) v> by finite differences
    quadratic = lambda p: _dot(v, products(p)[0])  # noqa: E731
    eps = 1e-6
    direction = _vector(params, seed=11)
    step = lambda s: jax.tree_util.tree_map(lambda a, d: a + s * d, params, direction)  # noqa: E731
    numeric = (quadratic(step(eps)) - quadratic(step(-eps))) / (2 * eps)
    np.testing.assert_allclose(_dot(jax.grad(quadratic)(params), direction), numeric, rtol=1e-6)


def _dot(a, b):
    return sum(
        jnp.vdot(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


# --- found by trying the API: dtypes, blocks in loops, jit=False, algebra -----------------


def test_low_and_mixed_precision_diagonals_and_damping():
    x = jnp.array([[1.0, 2.0, 0.5, 1.0]], dtype=jnp.float32)
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(4, jnp.float32)}

    def model(p):
        return x @ p["a"].astype(jnp.float32) + x @ p["b"]

    op = jaxhvp.ggn_operator(model, lambda out: jnp.sum(out**2), params)
    exact = jaxhvp.spectrum.diagonal(op, method="exact")  # 1 output < 8 params: output space
    assert exact.value["a"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(exact.value["b"]), 2 * np.asarray(x[0]) ** 2)
    sketched = jaxhvp.spectrum.diagonal(op, key=jax.random.key(0), num_probes=30, method="diag++")
    np.testing.assert_allclose(
        np.float32(sketched.value["b"]), 2 * np.asarray(x[0]) ** 2, rtol=1e-2
    )
    for combined in (op + 0.1, 2.0 * op, op - 0.1, op / 2.0, -op):
        product = combined @ params
        assert product["a"].dtype == jnp.bfloat16 and product["b"].dtype == jnp.float32


def test_literal_damping_keeps_the_psd_tag_under_jit():
    import lineax

    x = jnp.array([[1.0, 2.0], [3.0, 1.0], [0.0, 1.0]])
    op = jaxhvp.ggn_operator(lambda w: x @ w, lambda out: jnp.sum(out**2), jnp.ones(2))

    def solve(op, b):
        return lineax.linear_solve(
            (op + 1e-3).as_lineax(), b, lineax.CG(rtol=1e-10, atol=1e-10)
        ).value

    dense = 2 * x.T @ x + 1e-3 * jnp.eye(2)
    np.testing.assert_allclose(
        jax.jit(solve)(op, jnp.ones(2)), jnp.linalg.solve(dense, jnp.ones(2)), rtol=1e-8
    )
    seen = []
    jax.jit(lambda o: seen.append(((o + 1.0).psd, (2 * o).psd, (o - 1.0).psd)) or 0.0)(op)
    assert seen == [(True, True, False)]


def test_many_blocks_compile_once_each_and_never_run_uncached():
    import warnings

    params = {f"layer{i:02d}": jnp.full((2, 2), 0.1 * (i + 1)) for i in range(20)}

    def model(p):
        h = jnp.ones(2)
        for name in sorted(p):
            h = jnp.tanh(p[name] @ h)
        return h

    op = jaxhvp.ggn_operator(model, lambda out: jnp.sum(out**2), params)
    jaxhvp.cache_clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an "uncached, op by op" warning fails the test
        for name in sorted(params):
            op.block(lambda p, name=name: p[name]) @ params[name]
        for name in sorted(params):  # the second pass reuses every block's kernel
            op.block(lambda p, name=name: p[name]) @ params[name]
    assert jaxhvp.cache_info().uncached == 0
    assert jaxhvp.cache_info().compilations == 20


def test_uncached_warning_names_the_users_model():
    x = jnp.array([[1.0, 2.0], [3.0, 1.0]])

    def needs_a_float(w):  # a Python float of an array: cannot run in a compiled kernel
        return jnp.tanh(x @ w / float(jnp.abs(x).max()))

    with pytest.warns(UserWarning, match="runs needs_a_float at .*test_curvature.py"):
        op = jaxhvp.ggn_operator(needs_a_float, lambda out: jnp.sum(out**2), jnp.ones(2), jit=False)
        product = op @ jnp.ones(2)
    jac = jax.jacfwd(lambda w: jnp.tanh(x @ w / 3.0))(jnp.ones(2))
    np.testing.assert_allclose(product, 2 * jac.T @ jac @ jnp.ones(2), rtol=1e-10)
    np.testing.assert_allclose(
        jaxhvp.spectrum.diagonal(op, method="exact").value, np.diag(2 * jac.T @ jac), rtol=1e-10
    )


def test_block_selection_errors():
    _, ops = _operators()
    with pytest.raises(TypeError, match="must only pick parts of the inputs pytree"):
        ops["ggn"][0].block(lambda p: p["missing"])


@pytest.mark.parametrize("case", ["independent", "coupled loss", "batch statistics"])
def test_exact_output_space_diagonal_example_by_example_or_whole_batch(case, monkeypatch):
    """Example by example when the checks allow it; otherwise the whole-batch way: the same
    numbers either way (and, with the whole-batch way poisoned, NaN exactly when the checks
    reject the example-by-example way)."""
    x, y = _data()
    params = {"w": jax.random.normal(jax.random.key(9), (D, 8)) / 2, "v": jnp.ones((8, C))}
    batches = (x.reshape(2, 3, D), y.reshape(2, 3))  # 3 examples x 3 classes < 32 params

    def model(p, batch):
        h = jnp.tanh(batch[0] @ p["w"])
        if case == "batch statistics":  # examples see each other: not separable
            h = h - h.mean(axis=0)
        return h @ p["v"]

    def loss(out, batch):
        ce = optax.softmax_cross_entropy_with_integer_labels(out, batch[1]).mean()
        return ce + (0.1 * jnp.sum(out) ** 2 if case == "coupled loss" else 0.0)

    op = jaxhvp.ggn_operator(model, loss, params, batches=batches)
    assert op.exact_diagonal_cost() == 2 * 3 * C
    np.testing.assert_allclose(
        _flat(op.exact_diagonal()), np.diag(op.as_matrix()), rtol=1e-9, atol=1e-12
    )
    from jaxhvp.operators import _output_diagonal

    whole_batch = _output_diagonal.full_batch
    poisoned = lambda *a: jax.tree_util.tree_map(lambda t: t * jnp.nan, whole_batch(*a))  # noqa: E731
    monkeypatch.setattr(_output_diagonal, "full_batch", poisoned)
    jaxhvp.cache_clear()
    assert np.isnan(_flat(op.exact_diagonal())).any() == (case != "independent")
    monkeypatch.undo()
    jaxhvp.cache_clear()
    if case == "independent":
        fisher = jaxhvp.fisher_operator(model, params, likelihood="categorical", batches=batches)
        np.testing.assert_allclose(
            _flat(fisher.exact_diagonal()), np.diag(op.as_matrix()), rtol=1e-9, atol=1e-12
        )
