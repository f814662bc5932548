"""jaxhvp.spectrum against dense eigendecompositions of materialised Hessians, in float64.

References are independent of the code under test: ``jax.hessian`` of the loss over the
flattened parameters, ``numpy.linalg.eigh``, exact traces, and closed forms (low-rank and
diagonal operators). Compiled kernels are shared between tests where the options allow
(the same model operator, the same matvec code), to keep the file fast.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp
import jaxhvp.spectrum as spectrum

LAYERS = (("layer1", 3, 6), ("layer2", 6, 6), ("out", 6, 2))  # 80 parameters
NUM_BATCHES, BATCH = 4, 8


def mlp_loss(params, batch):
    x, y = batch
    h = x
    for name, _, _ in LAYERS:
        h = h @ params[name]["w"] + params[name]["b"]
        h = jnp.tanh(h) if name != "out" else h
    return jnp.mean((h - y) ** 2)


@functools.cache
def problem():
    """Float64 parameters and batches; called inside tests (x64 on), built once."""
    rng = np.random.default_rng(0)
    params = {
        name: {
            "w": jnp.asarray(rng.standard_normal((a, b)) / np.sqrt(a)),
            "b": jnp.asarray(0.1 * rng.standard_normal(b)),
        }
        for name, a, b in LAYERS
    }
    x = jnp.asarray(rng.standard_normal((NUM_BATCHES, BATCH, 3)))
    y = jnp.asarray(rng.standard_normal((NUM_BATCHES, BATCH, 2)))
    return params, (x, y)


def all_data(batches):
    return jax.tree.map(lambda b: b.reshape(-1, *b.shape[2:]), batches)


def dense_hessian(params, batch):
    """``jax.hessian`` of the loss over the flattened parameters: the reference."""
    flat, unravel = ravel_pytree(params)
    return np.asarray(_dense_hessian(flat, batch, unravel))


@functools.partial(jax.jit, static_argnums=2)
def _dense_hessian(flat, batch, unravel):
    return jax.hessian(lambda z: mlp_loss(unravel(z), batch))(flat)


@functools.cache
def model():
    """The Hessian operator of the MLP loss on all the data, and its dense reference."""
    params, batches = problem()
    data = all_data(batches)
    loss = functools.partial(mlp_loss, batch=data)
    return jaxhvp.hessian_operator(loss, params), dense_hessian(params, data)


def dense_matvec(matrix):
    """A plain matvec over flat vectors, for the eigenvalue tests: one kernel per shape."""
    return lambda v: matrix @ v


def probe_matvec(matrix):
    """The same for the trace and density tests. A second code location keeps each under the
    kernel cache's warning about functions compiled more than 16 times."""
    return lambda v: matrix @ v


def random_symmetric(n, seed=0, rank=None):
    rng = np.random.default_rng(seed)
    if rank is not None:
        b = rng.standard_normal((n, rank))
        return jnp.asarray(b @ b.T)
    m = rng.standard_normal((n, n))
    return jnp.asarray(m + m.T)


def expected_order(values, which):
    return {
        "largest": np.sort(values)[::-1],
        "smallest": np.sort(values),
        "magnitude": values[np.argsort(-np.abs(values), kind="stable")],
    }[which]


# --- eigenvalues -----------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["largest", "smallest", "magnitude"])
def test_eigenvalues_match_dense(which):
    op, h = model()
    values, vectors = np.linalg.eigh(h)
    eig = spectrum.eigenvalues(
        op, k=3, key=jax.random.key(0), which=which, return_vectors=True, tol=1e-10
    )
    expected = expected_order(values, which)[:3]
    np.testing.assert_allclose(eig.values, expected, rtol=1e-6)
    np.testing.assert_allclose(eig.values, expected, atol=1e-9 * np.abs(values).max())
    assert bool(jnp.all(eig.converged))
    assert float(jnp.max(eig.residuals)) <= 1e-10 * float(eig.scale)
    assert jax.tree.map(jnp.shape, eig.vectors) == jax.tree.map(lambda x: (3, *x.shape), op.grad)
    for i in range(3):
        u = np.asarray(ravel_pytree(jax.tree.map(lambda x: x[i], eig.vectors))[0])
        dense = vectors[:, np.argmin(np.abs(values - float(eig.values[i])))]
        np.testing.assert_allclose(abs(u @ dense), 1.0, atol=1e-8)  # equal up to sign
        np.testing.assert_allclose(np.linalg.norm(h @ u - float(eig.values[i]) * u), 0, atol=1e-8)


def test_changing_which_tol_or_budget_does_not_recompile():
    a = random_symmetric(40, seed=3)
    matvec, like = dense_matvec(a), jnp.zeros(40)
    spectrum.eigenvalues(matvec, k=4, key=jax.random.key(0), like=like)
    before = jaxhvp.cache_info().compilations
    for which in ("smallest", "magnitude"):
        spectrum.eigenvalues(
            matvec, k=4, key=jax.random.key(1), like=like, which=which, tol=1e-5, max_matvecs=99
        )
    assert jaxhvp.cache_info().compilations == before


def test_eigenvalues_of_a_matvec_over_a_pytree():
    a = random_symmetric(40, seed=1)
    like = {"a": jnp.zeros(30), "b": jnp.zeros((2, 5))}
    _, unravel = ravel_pytree(like)

    def matvec(v):
        return unravel(a @ ravel_pytree(v)[0])

    values = np.linalg.eigvalsh(np.asarray(a))
    eig = spectrum.eigenvalues(matvec, k=4, key=jax.random.key(2), like=like, tol=1e-10)
    np.testing.assert_allclose(eig.values, values[::-1][:4], rtol=1e-6)
    structs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), like)
    again = spectrum.eigenvalues(matvec, k=4, key=jax.random.key(2), like=structs, tol=1e-10)
    assert_trees_close(again.values, eig.values)


def test_repeated_and_zero_eigenvalues():
    # 2 I: the Krylov space breaks down after one step; fresh vectors find the other copies.
    eig = spectrum.eigenvalues(
        dense_matvec(2.0 * jnp.eye(40)), k=4, key=jax.random.key(0), like=jnp.zeros(40)
    )
    assert_trees_close(eig.values, jnp.full(4, 2.0))
    assert bool(jnp.all(eig.converged))
    # Rank 3: the zero eigenvalue is repeated 37 times.
    a = random_symmetric(40, seed=2, rank=3)
    eig = spectrum.eigenvalues(dense_matvec(a), k=4, key=jax.random.key(0), like=jnp.zeros(40))
    expected = np.sort(np.linalg.eigvalsh(np.asarray(a)))[::-1][:4]
    np.testing.assert_allclose(eig.values, expected, atol=1e-9 * expected[0])
    assert bool(jnp.all(eig.converged))


def test_unconverged_status_is_reported_and_throw_raises():
    # n, k and krylov_dim as in the tests above: their kernel. One restart (32 products), and
    # the residuals stay above 1e-12 (the smallest is about 7e-9).
    a = random_symmetric(40, seed=4)
    options = dict(k=4, key=jax.random.key(0), like=jnp.zeros(40), krylov_dim=20, max_matvecs=30)
    eig = spectrum.eigenvalues(dense_matvec(a), which="smallest", tol=1e-12, **options)
    assert not bool(jnp.all(eig.converged))
    np.testing.assert_array_equal(eig.converged, eig.residuals <= 1e-12 * eig.scale)
    assert int(eig.num_matvecs) <= 30 + 4
    with pytest.raises(jaxhvp.HVPError, match=r"did not converge.*Raise max_matvecs"):
        spectrum.eigenvalues(dense_matvec(a), which="smallest", tol=1e-12, throw=True, **options)


def test_float32_operator_converges_at_the_default_tolerance():
    a = random_symmetric(40, seed=5)
    eig = spectrum.eigenvalues(
        dense_matvec(a.astype(jnp.float32)), k=2, key=jax.random.key(0), like=jnp.zeros(40, "f4")
    )
    assert eig.values.dtype == jnp.float32
    assert bool(jnp.all(eig.converged))
    np.testing.assert_allclose(eig.values, np.sort(np.linalg.eigvalsh(a))[::-1][:2], rtol=1e-4)


def test_spectrum_under_jit():
    params, batches = problem()
    op, h = model()
    data = all_data(batches)

    @jax.jit
    def curvature(params, key):
        op = jaxhvp.hessian_operator(lambda p: mlp_loss(p, data), params)
        eig = spectrum.eigenvalues(op, k=3, key=key, tol=1e-10)
        return eig.values, spectrum.trace(op, key=key, num_probes=30).value

    values, tr = curvature(params, jax.random.key(1))
    np.testing.assert_allclose(values, np.sort(np.linalg.eigvalsh(h))[::-1][:3], rtol=1e-6)
    eager = spectrum.trace(op, key=jax.random.key(1), num_probes=30)
    np.testing.assert_allclose(tr, eager.value, rtol=1e-10)
    # The operator itself crosses the jit boundary as a pytree.
    crossed = jax.jit(lambda op, key: spectrum.trace(op, key=key, num_probes=30).value)
    np.testing.assert_allclose(crossed(op, jax.random.key(1)), eager.value, rtol=1e-10)


# --- trace -----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["hutch++", "hutchinson", "xtrace"])
def test_trace_within_four_standard_errors(method):
    op, h = model()
    est = spectrum.trace(op, key=jax.random.key(1), num_probes=30, method=method)
    assert 0 < float(est.stderr) < abs(np.trace(h))
    assert abs(float(est.value) - np.trace(h)) <= 4 * float(est.stderr)
    assert int(est.num_matvecs) == (60 if method == "xtrace" else 30)


@pytest.mark.parametrize("method", ["hutch++", "xtrace"])
def test_sketching_estimators_are_exact_on_low_rank(method):
    a = random_symmetric(60, seed=6, rank=4)
    est = spectrum.trace(
        probe_matvec(a), key=jax.random.key(0), like=jnp.zeros(60), num_probes=15, method=method
    )
    np.testing.assert_allclose(est.value, jnp.trace(a), rtol=1e-10)
    assert float(est.stderr) <= 1e-10 * float(jnp.trace(a))


def test_hutchinson_is_exact_on_a_diagonal():
    # A diagonal matrix (each product's entry is one term: exact), of the size and with the
    # probes of the tests around it, whose kernel it shares.
    d = jnp.linspace(-1.0, 3.0, 60)
    est = spectrum.trace(
        probe_matvec(jnp.diag(d)),
        key=jax.random.key(0),
        like=jnp.zeros(60),
        num_probes=15,
        method="hutchinson",
    )
    np.testing.assert_allclose(est.value, d.sum(), rtol=1e-12)


@pytest.mark.parametrize("method", ["hutch++", "hutchinson"])
def test_chunked_probes_give_the_same_trace(method):
    # n and num_probes as in test_sketching_estimators_are_exact_on_low_rank: the whole
    # run's kernel is shared with it (hutch++) or with test_hutchinson_is_exact_on_a_diagonal.
    a = random_symmetric(60, seed=7)
    options = dict(key=jax.random.key(3), like=jnp.zeros(60), num_probes=15, method=method)
    whole = spectrum.trace(probe_matvec(a), **options)
    chunked = spectrum.trace(probe_matvec(a), probe_batch_size=4, **options)
    assert_trees_close(chunked, whole, rtol=1e-12, atol=1e-12)


# --- density ---------------------------------------------------------------------------------


def test_density_mass_support_and_nodes():
    op, h = model()
    values = np.linalg.eigvalsh(h)
    dens = spectrum.density(op, key=jax.random.key(2), num_probes=3, krylov_dim=80)
    np.testing.assert_allclose(jnp.trapezoid(dens.density, dens.grid), 1.0, atol=1e-6)
    assert float(dens.grid[0]) <= values[0] and float(dens.grid[-1]) >= values[-1]
    assert bool(jnp.all(dens.density >= 0)) and bool(jnp.all(jnp.diff(dens.grid) > 0))
    np.testing.assert_allclose(dens.weights.sum(axis=1), 1.0, rtol=1e-12)
    # A full Krylov space: each probe's nodes are the eigenvalues themselves.
    for nodes in dens.nodes:
        np.testing.assert_allclose(np.sort(nodes), values, atol=1e-9 * np.abs(values).max())


def test_density_on_repeated_eigenvalues_puts_mass_only_there():
    # The probe's Krylov space is 2-dimensional: Lanczos breaks down after two steps.
    d = jnp.array([1.0] * 5 + [3.0] * 5)
    dens = spectrum.density(
        lambda v: d * v, key=jax.random.key(0), like=jnp.zeros(10), num_probes=4, krylov_dim=10
    )
    at_one = jnp.abs(dens.nodes - 1.0) < 1e-10
    at_three = jnp.abs(dens.nodes - 3.0) < 1e-10
    # Rademacher probes put exactly half their mass on each eigenspace.
    np.testing.assert_allclose(jnp.sum(dens.weights * at_one, axis=1), 0.5, atol=1e-12)
    np.testing.assert_allclose(jnp.sum(dens.weights * at_three, axis=1), 0.5, atol=1e-12)
    np.testing.assert_allclose(jnp.trapezoid(dens.density, dens.grid), 1.0, atol=1e-6)


def test_chunked_probes_and_a_given_grid():
    a = random_symmetric(40, seed=8)
    grid = jnp.linspace(-30.0, 30.0, 301)
    options = dict(key=jax.random.key(4), like=jnp.zeros(40), num_probes=5, krylov_dim=12)
    whole = spectrum.density(probe_matvec(a), grid=grid, sigma=0.5, **options)
    chunked = spectrum.density(probe_matvec(a), grid=grid, sigma=0.5, probe_batch_size=2, **options)
    assert_trees_close(chunked, whole, rtol=1e-10, atol=1e-12)
    assert_trees_close(whole.grid, grid)
    assert float(whole.sigma) == 0.5
    values = np.linalg.eigvalsh(np.asarray(a))
    assert values[0] - 1e-9 <= float(whole.nodes.min())
    assert float(whole.nodes.max()) <= values[-1] + 1e-9
    np.testing.assert_allclose(jnp.trapezoid(whole.density, grid), 1.0, atol=1e-6)


# --- data batches and blocks -----------------------------------------------------------------


@functools.cache
def batch_references():
    """The mean of the batches' dense Hessians, values and gradients (numpy): built once."""
    params, batches = problem()
    per_batch = [jax.tree.map(lambda b: b[i], batches) for i in range(NUM_BATCHES)]
    hessians = [dense_hessian(params, b) for b in per_batch]
    values, grads = zip(*(jax.value_and_grad(mlp_loss)(params, b) for b in per_batch))
    mean = functools.partial(np.mean, axis=0)
    return mean(hessians), mean(values), jax.tree.map(lambda *g: mean(g), *grads)


def flat_positions(params, select):
    """The positions of ``select(params)``'s entries in ``ravel_pytree(params)``."""
    flat, unravel = ravel_pytree(params)
    indices = unravel(jnp.arange(flat.size, dtype=flat.dtype))
    return np.asarray(ravel_pytree(select(indices))[0]).astype(int)


@pytest.mark.parametrize("mode", ["fwd-rev", "rev-rev"])
def test_batch_operator_is_the_mean_of_batch_hessians(mode):
    params, batches = problem()
    h, value, grad = batch_references()
    op = spectrum.batch_hessian_operator(mlp_loss, params, batches, mode=mode)
    assert isinstance(op, jaxhvp.HessianOperator)
    np.testing.assert_allclose(op.as_matrix(), h, atol=1e-12)
    np.testing.assert_allclose(op.value, value, rtol=1e-12)
    assert_trees_close(op.grad, jax.tree.map(jnp.asarray, grad))
    # With equal batches, it is the Hessian on all the data.
    np.testing.assert_allclose(op.as_matrix(), model()[1], atol=1e-12)


def test_batch_block_operator_and_its_spectrum_under_jit():
    params, batches = problem()
    h, _, grad = batch_references()

    def select(p):
        return (p["out"]["w"], p["layer1"]["b"])

    idx = flat_positions(params, select)
    op = spectrum.batch_hessian_operator(mlp_loss, params, batches, select=select)
    np.testing.assert_allclose(op.as_matrix(), h[np.ix_(idx, idx)], atol=1e-12)
    assert_trees_close(op.grad, jax.tree.map(jnp.asarray, select(grad)))

    @jax.jit
    def top(params, batches, key):
        op = spectrum.batch_hessian_operator(mlp_loss, params, batches, select=select)
        return spectrum.eigenvalues(op, k=2, key=key, tol=1e-10).values

    expected = np.sort(np.linalg.eigvalsh(h[np.ix_(idx, idx)]))[::-1][:2]
    np.testing.assert_allclose(top(params, batches, jax.random.key(0)), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "select",
    [lambda p: p["layer2"], lambda p: (p["out"]["w"], p["layer1"]["b"]), lambda p: p["out"]["b"]],
    ids=["layer", "tuple", "array"],
)
def test_block_operator_is_a_block_of_the_full_hessian(select):
    params, batches = problem()
    op, h = model()
    loss = functools.partial(mlp_loss, batch=all_data(batches))
    block = spectrum.block_operator(loss, params, select)
    idx = flat_positions(params, select)
    np.testing.assert_allclose(block.as_matrix(), h[np.ix_(idx, idx)], atol=1e-12)
    assert_trees_close(block.grad, select(op.grad))


def test_block_operator_on_tuple_inputs():
    def f(x, y):
        return jnp.sum(x**2 * y[0]) + jnp.sum(jnp.sin(y))

    inputs = (jnp.array([1.0, 2.0]), jnp.array([0.5, -1.0]))
    block = spectrum.block_operator(f, inputs, lambda xs: xs[1])
    full = jaxhvp.hessian(f, inputs)  # torch's layout: blocks [i][j]
    np.testing.assert_allclose(block.as_matrix(), full[1][1], atol=1e-12)


# --- errors ----------------------------------------------------------------------------------


def test_operand_errors_name_what_was_expected_and_the_fix():
    op, _ = model()
    key = jax.random.key(0)
    with pytest.raises(TypeError, match=r"needs like= with a plain matvec.*like=params"):
        spectrum.eigenvalues(lambda v: v, key=key)
    with pytest.raises(jaxhvp.HVPError, match=r"already knows.*Drop like="):
        spectrum.trace(op, key=key, num_probes=4, like=op.grad)
    with pytest.raises(TypeError, match=r"must be a jaxhvp operator or a callable"):
        spectrum.density(jnp.eye(3), key=key)
    with pytest.raises(TypeError, match=r"one JAX PRNG key.*got int 0"):
        spectrum.eigenvalues(op, key=0)
    with pytest.raises(TypeError, match=r"arrays or jax.ShapeDtypeStruct.*like\['a'\]"):
        spectrum.eigenvalues(lambda v: v, key=key, like={"a": 1.0})
    with pytest.raises(jaxhvp.HVPError, match=r"must return H v with the structure"):
        spectrum.eigenvalues(lambda v: v[:2], key=key, like=jnp.zeros(3))


def test_option_errors():
    op, _ = model()
    key = jax.random.key(0)
    with pytest.raises(jaxhvp.HVPError, match=r"which .* must be one of 'largest'.*got 'top'"):
        spectrum.eigenvalues(op, key=key, which="top")
    with pytest.raises(jaxhvp.HVPError, match=r"at most n = 80 .* k = 81. Ask for k <= 80"):
        spectrum.eigenvalues(op, k=81, key=key)
    with pytest.raises(jaxhvp.HVPError, match=r"krylov_dim .* must exceed k = 5"):
        spectrum.eigenvalues(op, k=5, key=key, krylov_dim=5)
    with pytest.raises(jaxhvp.HVPError, match=r"max_matvecs .* one full cycle"):
        spectrum.eigenvalues(op, key=key, max_matvecs=10)
    with pytest.raises(jaxhvp.HVPError, match=r"tol .* positive number"):
        spectrum.eigenvalues(op, key=key, tol=0.0)
    with pytest.raises(jaxhvp.HVPError, match=r"num_probes .* int >= 4, but got 3"):
        spectrum.trace(op, key=key, num_probes=3)
    with pytest.raises(jaxhvp.HVPError, match=r"method .* got 'exact'"):
        spectrum.trace(op, key=key, num_probes=10, method="exact")
    with pytest.raises(jaxhvp.HVPError, match=r"cannot chunk.*method='hutch\+\+'"):
        spectrum.trace(op, key=key, num_probes=10, method="xtrace", probe_batch_size=2)
    with pytest.raises(jaxhvp.HVPError, match=r"at most n = 80 probes"):
        spectrum.trace(op, key=key, num_probes=81, method="xtrace")
    with pytest.raises(jaxhvp.HVPError, match=r"probe_batch_size .* int >= 1"):
        spectrum.density(op, key=key, probe_batch_size=0)
    with pytest.raises(jaxhvp.HVPError, match=r"1-D array of points.*jnp.ravel"):
        spectrum.density(op, key=key, grid=jnp.zeros((2, 2)))
    with pytest.raises(jaxhvp.HVPError, match=r"sigma .* positive number"):
        spectrum.density(op, key=key, sigma=-1.0)

    @jax.jit
    def thrown(key):
        return spectrum.eigenvalues(op, key=key, throw=True).values

    with pytest.raises(jaxhvp.HVPError, match=r"throw=True needs an eager call"):
        thrown(key)


def test_batch_and_block_errors():
    params, batches = problem()
    x, y = batches
    with pytest.raises(jaxhvp.HVPError, match=r"same leading length.*reshape"):
        spectrum.batch_hessian_operator(mlp_loss, params, (x, y[:3]))
    with pytest.raises(jaxhvp.HVPError, match=r"leading batch axis.*jnp.stack"):
        spectrum.batch_hessian_operator(mlp_loss, params, (x, jnp.zeros(())))
    with pytest.raises(TypeError, match=r"pytree of arrays.*batches\[1\]"):
        spectrum.batch_hessian_operator(mlp_loss, params, (x, 1.0))
    with pytest.raises(jaxhvp.HVPError, match=r"mode='auto' is not supported"):
        spectrum.batch_hessian_operator(mlp_loss, params, batches, mode="auto")
    loss = functools.partial(mlp_loss, batch=all_data(batches))
    with pytest.raises(TypeError, match=r"only pick parts of the inputs.*not compute"):
        spectrum.block_operator(loss, params, lambda p: p["out"]["w"] * 2)
    with pytest.raises(jaxhvp.HVPError, match=r"picked no array"):
        spectrum.block_operator(loss, params, lambda p: {})
    with pytest.raises(jaxhvp.HVPError, match=r"same leaf more than once"):
        spectrum.block_operator(loss, params, lambda p: (p["out"]["b"], p["out"]["b"]))
    with pytest.raises(TypeError, match=r"must return leaves of the inputs"):
        spectrum.block_operator(loss, params, lambda p: (p["out"]["b"], jnp.ones(2)))
