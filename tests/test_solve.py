"""jaxhvp.solve (CG, MINRES, LiSSA, low rank), its preconditioners and its status codes,
against independent references.

The references never run the code under test: ``jnp.linalg.solve`` of the dense matrix
(``jax.hessian`` on the flattened parameters, or the textbook ``J^T H_L J``), scipy's ``cg``
and ``minres`` on the same matrix, numpy's ``eigh`` for the low-rank projection and the
Nyström values, the LiSSA recursion written out by hand with each batch's dense Hessian,
and lineax's CG.

Most matrix-level checks use one quadratic ``0.5 x^T A x`` whose matrix ``A`` rides in as
the data of a Hessian operator (``batches=A[None]``): every ``A`` of one size then shares
one compiled kernel per method, which keeps the file fast.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse.linalg
from conftest import assert_trees_close
from jax.flatten_util import ravel_pytree

import jaxhvp
from jaxhvp.linalg import SolveStatus, solve_message

# --- a small regression problem over a dict of parameters ---------------------------------

_DATA = np.random.default_rng(0)
X = _DATA.normal(size=(8, 3))
Y = _DATA.normal(size=(8, 2))
BATCHES = (X.reshape(4, 2, 3), Y.reshape(4, 2, 2))  # four different batches of two examples


def _logcosh(z):
    return jnp.logaddexp(z, -z) - jnp.log(2.0)


def batch_loss(params, batch):
    x, y = (jnp.asarray(a, params["w"].dtype) for a in batch)
    residual = x @ params["w"] + params["b"] - y
    ridge = 0.1 * jnp.sum(params["w"] ** 2) + 0.05 * jnp.sum(params["b"] ** 2)
    return jnp.sum(_logcosh(residual)) + ridge  # convex: its Hessian is positive definite


def loss(params):
    return batch_loss(params, (X, Y))


def tuple_loss(w, b):  # the tuple rule: inputs (w, b), vectors (v_w, v_b)
    return loss({"w": w, "b": b})


def model(params):
    return jnp.tanh(jnp.asarray(X, params["w"].dtype) @ params["w"] + params["b"])


def output_loss(out):
    return jnp.sum(_logcosh(out - jnp.asarray(Y, out.dtype)))  # convex in the outputs


def _params(dtype=np.float64):
    """The point, rounded to float32 so that every dtype holds the same one."""
    rng = np.random.default_rng(1)
    w, b = (rng.normal(size=shape).astype(np.float32) for shape in ((3, 2), (2,)))
    return {"w": jnp.asarray(w, dtype), "b": jnp.asarray(b, dtype)}


def _vector(like, seed=2):
    flat, unravel = ravel_pytree(like)
    return unravel(jnp.asarray(np.random.default_rng(seed).normal(size=flat.size), flat.dtype))


def _flat(tree):
    return np.asarray(ravel_pytree(tree)[0], np.float64)


def mean_loss(params):  # the mean of the batch losses, written out
    return sum(batch_loss(params, (x, y)) for x, y in zip(*BATCHES)) / len(BATCHES[0])


def _hessian_of(f, inputs):
    flat, unravel = ravel_pytree(inputs)
    return np.asarray(jax.jit(jax.hessian(lambda v: f(unravel(v))))(flat))


def _ggn_and_jacobian(params):
    """``J^T H_L J`` from the dense Jacobian of the model and Hessian of the loss."""
    flat, unravel = ravel_pytree(params)
    out = model(params)
    jac = jax.jit(jax.jacfwd(lambda v: model(unravel(v)).ravel()))(flat)
    h_loss = jax.jit(jax.hessian(lambda o: output_loss(o.reshape(out.shape))))(out.ravel())
    return np.asarray(jac.T @ h_loss @ jac), np.asarray(jac)


@functools.cache
def _dense(name):
    """The dense float64 matrix of case ``name``, from its definition (computed once)."""
    params = _params()
    if name == "hessian":
        matrix = _hessian_of(loss, params)
    elif name == "hessian_batches":
        matrix = _hessian_of(mean_loss, params)
    elif name == "tuple":
        matrix = _hessian_of(lambda p: tuple_loss(*p), (params["w"], params["b"]))
    elif name == "ggn":
        matrix = _ggn_and_jacobian(params)[0]
    elif name == "fisher":  # Gaussian, mean over the 16 outputs: F = 2 / 16 J^T J
        jac = _ggn_and_jacobian(params)[1]
        matrix = 2 / jac.shape[0] * jac.T @ jac
    elif name == "block":
        matrix = _hessian_of(lambda w: loss({"w": w, "b": params["b"]}), params["w"])
    elif name == "combination":  # 0.5 (H + G) + 0.25 I
        matrix = 0.5 * (_dense("hessian") + _dense("ggn")) + 0.25 * np.eye(8)
    else:
        raise AssertionError(name)
    matrix.setflags(write=False)
    return matrix


def _operator(name, dtype=np.float64):
    params = _params(dtype)
    if name == "hessian":
        return jaxhvp.hessian_operator(loss, params)
    if name == "hessian_batches":
        return jaxhvp.hessian_operator(batch_loss, params, batches=BATCHES)
    if name == "tuple":
        return jaxhvp.hessian_operator(tuple_loss, (params["w"], params["b"]))
    if name == "ggn":
        return jaxhvp.ggn_operator(model, output_loss, params)
    if name == "fisher":
        return jaxhvp.fisher_operator(model, params, likelihood="gaussian")
    if name == "block":
        return jaxhvp.hessian_operator(loss, params).block(lambda p: p["w"])
    if name == "combination":
        hessian = jaxhvp.hessian_operator(loss, params)
        return 0.5 * (hessian + jaxhvp.ggn_operator(model, output_loss, params)) + 0.25
    raise AssertionError(name)


def _case(name, dtype=np.float64):
    """``(operator, its dense float64 matrix)`` for each kind of operator ``solve`` takes."""
    return _operator(name, dtype), _dense(name)


def _dense_solve(matrix, damping, b):
    _, unravel = ravel_pytree(b)
    x = np.linalg.solve(matrix + damping * np.eye(len(matrix)), _flat(b))
    return unravel(jnp.asarray(x, ravel_pytree(b)[0].dtype))


def _relative_residual(matrix, damping, b, x):
    """``||b - (A + damping I) x|| / ||b||``, dense, in float64."""
    b, x = _flat(b), _flat(x)
    return np.linalg.norm(b - (matrix + damping * np.eye(len(b))) @ x) / np.linalg.norm(b)


def _options(method, matrix, damping):
    """The method's own options; LiSSA's scale from the dense spectrum (reference data)."""
    if method == "lissa":
        top = np.linalg.eigvalsh(matrix + damping * np.eye(len(matrix)))[-1]
        return dict(scale=1.5 * top, maxiter=2000)
    if method == "lowrank":
        return dict(rank=len(matrix), key=jax.random.key(0))  # rank n: the exact inverse
    return {}


# --- 1. every method against the dense solve ----------------------------------------------

CASES_AND_METHODS = [
    *[(case, "cg") for case in ("hessian", "hessian_batches", "tuple", "ggn", "fisher")],
    *[(case, "cg") for case in ("block", "combination")],
    *[(case, "minres") for case in ("hessian_batches", "combination")],
    *[(case, "lissa") for case in ("hessian", "fisher")],  # without batches: exact
    ("hessian", "lowrank"),  # rank n: the exact inverse
]


@pytest.mark.parametrize(("case", "method"), CASES_AND_METHODS)
def test_solve_equals_the_dense_solve(case, method):
    op, matrix = _case(case)
    damping = 0.5
    b = _vector(op.like)
    x, info = jaxhvp.solve(
        op, b, damping=damping, method=method, tol=1e-12, **_options(method, matrix, damping)
    )
    assert_trees_close(x, _dense_solve(matrix, damping, b), rtol=1e-9, atol=1e-11)
    assert type(x) is type(b)  # the tuple rule: a tuple in, a tuple out
    assert int(info.status) == SolveStatus.SUCCESS and bool(info.success)
    assert info.message == "The residual is within the tolerance."
    np.testing.assert_allclose(
        info.residual, _relative_residual(matrix, damping, b, x), rtol=1e-3, atol=1e-14
    )
    assert info.residual <= 1e-11
    assert int(info.num_matvecs) == int(info.iterations) + 1  # + the residual check


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_float32_solve_equals_the_dense_solve(method):
    op, matrix = _case("hessian", np.float32)
    damping = 0.5
    b = _vector(op.like)
    x, info = jaxhvp.solve(op, b, damping=damping, method=method, tol=1e-6)
    assert jax.tree_util.tree_leaves(x)[0].dtype == np.float32
    assert info.residual.dtype == np.float32
    assert int(info.status) == SolveStatus.SUCCESS
    assert_trees_close(x, _dense_solve(matrix, damping, b))  # float32 tolerance: 2e-4


# --- the quadratic 0.5 x^T A x: one kernel per method for every matrix A of size N ----------

N = 30


def quadratic(x, a):
    return 0.5 * x @ (a @ x)


_quadratic_hessian = jax.jit(jax.hessian(quadratic))  # in x; the reference Hessian


def _quadratic_operator(matrices):
    """The Hessian of ``quadratic`` averaged over a stack of matrices (one batch each)."""
    matrices = np.asarray(matrices)
    batches = jnp.asarray(matrices if matrices.ndim == 3 else matrices[None])
    return jaxhvp.hessian_operator(quadratic, jnp.zeros(N), batches=batches)


def _symmetric(eigenvalues, seed):
    """``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(N, N)))
    a = (q * np.asarray(eigenvalues)) @ q.T
    return (a + a.T) / 2


def _rhs(seed=1):
    return np.random.default_rng(seed).normal(size=N)


def test_the_test_matrices_have_the_spectrum_asked_for_and_are_their_hessians():
    eigenvalues = np.concatenate([-np.logspace(-1, 1, 10), np.logspace(-2, 1, N - 10)])
    a = _symmetric(eigenvalues, seed=3)
    np.testing.assert_allclose(np.linalg.eigvalsh(a), np.sort(eigenvalues), atol=1e-12)
    np.testing.assert_array_equal(a, a.T)
    dense = _quadratic_hessian(jnp.zeros(N), jnp.asarray(a))
    np.testing.assert_allclose(dense, a, atol=1e-14)
    scaled = _badly_scaled()
    jacobi = scaled / np.sqrt(np.outer(np.diag(scaled), np.diag(scaled)))
    assert np.linalg.cond(scaled) > 1e3 and np.linalg.cond(jacobi) < 4


# condition 1e3: enough Krylov steps (more than N, as rounding loses orthogonality) to compare
SPREAD = np.logspace(-2, 1, N)
SMALLEST = SPREAD[0]


def _scipy_iterates(solver, a, b, **options):
    """scipy's iterates, one per iteration (from its callback), and its solution."""
    iterates = []
    x, code = solver(a, b, callback=lambda xk: iterates.append(np.copy(xk)), **options)
    return iterates, x, code


# --- 2. CG and MINRES against scipy --------------------------------------------------------


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_krylov_iterates_equal_scipys_step_by_step(method):
    """CG and MINRES iterates are unique (the A-norm and residual minimisers over the
    Krylov space): after k steps both libraries hold the same vector."""
    a, b = _symmetric(SPREAD, seed=0), _rhs()
    op = _quadratic_operator(a)
    solver = {"cg": scipy.sparse.linalg.cg, "minres": scipy.sparse.linalg.minres}[method]
    for k in (1, 3, 10):
        x, info = jaxhvp.solve(op, jnp.asarray(b), method=method, tol=1e-15, maxiter=k)
        expected, _ = solver(a, b, rtol=1e-15, maxiter=k)
        assert int(info.iterations) == k
        assert int(info.status) == SolveStatus.NOT_CONVERGED
        np.testing.assert_allclose(x, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8, 1e-10])
def test_cg_stops_where_scipys_cg_stops(tol):
    """Both stop at the first ``k`` with ``||r_k|| <= tol ||b||`` on the recurrence residual.
    The rule is checked exactly on jaxhvp's own trajectory (one step fewer has not met it).
    Past ``N`` steps rounding, not the Krylov space, shapes both trajectories (and differs
    with the machine's BLAS), so the counts of the two libraries agree to a few steps."""
    a, b = _symmetric(SPREAD, seed=0), _rhs()
    op = _quadratic_operator(a)
    x, info = jaxhvp.solve(op, jnp.asarray(b), tol=tol)
    iterates, expected, code = _scipy_iterates(
        scipy.sparse.linalg.cg, a, b, rtol=tol, atol=0.0, maxiter=10 * N
    )
    assert code == 0 and int(info.status) == SolveStatus.SUCCESS
    steps = int(info.iterations)
    _, before = jaxhvp.solve(op, jnp.asarray(b), tol=tol, maxiter=steps - 1)
    assert info.residual <= tol < before.residual
    assert int(before.status) == SolveStatus.NOT_CONVERGED
    assert abs(steps - len(iterates)) <= (1 if len(iterates) <= N else 3)
    # both residuals are at most ~tol ||b||, so the solutions differ by at most
    # (r_1 + r_2) ||b|| / lambda_min
    bound = (float(info.residual) + _relative_residual(a, 0.0, b, expected)) * np.linalg.norm(b)
    assert np.linalg.norm(np.asarray(x) - expected) <= 1.01 * bound / SMALLEST
    if tol == 1e-10:
        np.testing.assert_allclose(x, expected, rtol=1e-8)


@pytest.mark.parametrize("tol", [1e-4, 1e-6, 1e-8, 1e-10])
def test_minres_stops_where_scipys_minres_first_meets_the_tolerance(tol):
    """scipy's MINRES stops on a different test (``||r|| <= tol (||A|| ||x|| + ||b||)``),
    so the reference count is the first scipy iterate whose true residual is within
    ``tol ||b||``; the counts agree to one step."""
    a, b = _symmetric(SPREAD, seed=0), _rhs()
    x, info = jaxhvp.solve(_quadratic_operator(a), jnp.asarray(b), tol=tol, method="minres")
    iterates, _, _ = _scipy_iterates(scipy.sparse.linalg.minres, a, b, rtol=1e-15, maxiter=5 * N)
    residuals = [_relative_residual(a, 0.0, b, xk) for xk in iterates]
    first = next(k for k, r in enumerate(residuals, start=1) if r <= tol)
    assert int(info.status) == SolveStatus.SUCCESS
    assert abs(int(info.iterations) - first) <= 1
    bound = (float(info.residual) + residuals[first - 1]) * np.linalg.norm(b)
    assert np.linalg.norm(np.asarray(x) - iterates[first - 1]) <= 1.01 * bound / SMALLEST
    np.testing.assert_allclose(
        info.residual, _relative_residual(a, 0.0, b, x), rtol=1e-4, atol=1e-12
    )


# --- 3. an indefinite Hessian: MINRES solves it, CG says INDEFINITE -----------------------

INDEFINITE = np.concatenate([-np.logspace(-1, 1, 10), np.logspace(-1, 1, N - 10)])


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_minres_solves_an_indefinite_hessian(damping):
    a = _symmetric(INDEFINITE, seed=3)
    b = _rhs()
    x, info = jaxhvp.solve(
        _quadratic_operator(a), jnp.asarray(b), damping=damping, method="minres", tol=1e-12
    )
    assert int(info.status) == SolveStatus.SUCCESS
    np.testing.assert_allclose(x, np.linalg.solve(a + damping * np.eye(N), b), rtol=1e-9)


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_cg_reports_indefinite_on_an_indefinite_hessian(damping):
    a = _symmetric(INDEFINITE, seed=3)
    op = _quadratic_operator(a)
    negative = np.linalg.eigh(a)[1][:, 0]  # curvature -10 + damping along it
    for b in (_rhs(), negative + 0.1 * _rhs()):
        x, info = jaxhvp.solve(op, jnp.asarray(b), damping=damping, tol=1e-10)
        assert int(info.status) == SolveStatus.INDEFINITE and not bool(info.success)
        assert "negative curvature" in info.message and "minres" in info.message
        residual = _relative_residual(a, damping, b, x)
        np.testing.assert_allclose(info.residual, residual, rtol=1e-10)  # honest, not hidden
        assert residual > 0.1  # far from a solution, and said so
        with pytest.raises(jaxhvp.HVPError, match="negative curvature"):
            jaxhvp.solve(op, jnp.asarray(b), damping=damping, tol=1e-10, throw=True)


# --- 4. LiSSA ------------------------------------------------------------------------------


def test_lissa_error_is_the_neumann_remainder():
    """Without batches, ``x* - x_j = (I - (A + damping) / scale)^j x*`` from ``x_0 = 0``."""
    a, b = _symmetric(np.linspace(0.5, 5.0, N), seed=5), _rhs()
    damping, scale = 0.2, 8.0  # scale above the largest eigenvalue 5.2
    op = _quadratic_operator(a)
    shifted = a + damping * np.eye(N)
    solution = np.linalg.solve(shifted, b)
    for steps in (1, 5, 40):
        x, info = jaxhvp.solve(
            op, jnp.asarray(b), damping=damping, method="lissa", scale=scale, maxiter=steps
        )
        remainder = np.linalg.matrix_power(np.eye(N) - shifted / scale, steps) @ solution
        np.testing.assert_allclose(solution - np.asarray(x), remainder, rtol=1e-12, atol=1e-13)
        assert int(info.iterations) == steps
        np.testing.assert_allclose(info.residual, _relative_residual(a, damping, b, x), rtol=1e-10)
        assert int(info.status) == SolveStatus.NOT_CONVERGED  # residuals 0.6 to 5e-3
    x, info = jaxhvp.solve(op, jnp.asarray(b), damping=damping, method="lissa", scale=scale)
    assert int(info.iterations) == 1000 and int(info.status) == SolveStatus.SUCCESS
    np.testing.assert_allclose(x, solution, rtol=1e-10)


def test_lissa_steps_use_one_batch_each_in_order():
    """With batches, step ``k`` is ``x + (b - (A_{k mod 3} + damping) x) / scale`` with the
    batch's own Hessian (from jax.hessian of that batch's loss), never the mean."""
    matrices = np.stack([_symmetric(np.linspace(0.5, 5.0, N), seed=10 + i) for i in range(3)])
    own = [np.asarray(_quadratic_hessian(jnp.zeros(N), jnp.asarray(m))) for m in matrices]
    op = _quadratic_operator(matrices)
    b, x0 = _rhs(), np.random.default_rng(9).normal(size=N)
    damping, scale = 0.2, 8.0
    one_step, _ = jaxhvp.solve(
        op, jnp.asarray(b), damping=damping, method="lissa", scale=scale, maxiter=1
    )
    np.testing.assert_allclose(one_step, b / scale, rtol=1e-14)  # from x0 = 0
    for steps in (1, 2, 3, 4, 7):
        x, _ = jaxhvp.solve(
            op,
            jnp.asarray(b),
            x0=jnp.asarray(x0),
            damping=damping,
            method="lissa",
            scale=scale,
            maxiter=steps,
        )
        by_hand, with_mean = x0.copy(), x0.copy()
        for k in range(steps):
            by_hand = by_hand + (b - (own[k % 3] + damping * np.eye(N)) @ by_hand) / scale
            mean = np.mean(own, axis=0) + damping * np.eye(N)
            with_mean = with_mean + (b - mean @ with_mean) / scale
        np.testing.assert_allclose(x, by_hand, rtol=1e-12, atol=1e-13)
        assert np.abs(np.asarray(x) - with_mean).max() > 1e-3  # the batches do differ


def test_lissa_over_batches_reports_its_true_residual():
    """Cycling batches stalls at their noise: NOT_CONVERGED, with the true residual of the
    mean operator (the operator's matrix) for the returned x."""
    matrices = np.stack([_symmetric(np.linspace(0.5, 5.0, N), seed=10 + i) for i in range(3)])
    b, damping = _rhs(), 0.2
    x, info = jaxhvp.solve(
        _quadratic_operator(matrices),
        jnp.asarray(b),
        damping=damping,
        method="lissa",
        scale=8.0,
        maxiter=300,
    )
    residual = _relative_residual(matrices.mean(axis=0), damping, b, x)
    np.testing.assert_allclose(info.residual, residual, rtol=1e-10)
    assert residual > 1e-3
    assert int(info.status) == SolveStatus.NOT_CONVERGED
    assert "above the tolerance" in info.message


@pytest.mark.parametrize(("steps", "status"), [(10, "NOT_CONVERGED"), (1000, "NONFINITE")])
def test_lissa_with_too_small_a_scale_diverges_and_says_so(steps, status):
    a, b = _symmetric(np.linspace(0.5, 5.0, N), seed=5), _rhs()
    op = _quadratic_operator(a)
    x, info = jaxhvp.solve(
        op, jnp.asarray(b), damping=0.2, method="lissa", scale=1.0, maxiter=steps
    )
    assert int(info.status) == SolveStatus[status]
    if status == "NOT_CONVERGED":  # the iterate grows as |1 - 5.2| ^ j
        np.testing.assert_allclose(info.residual, _relative_residual(a, 0.2, b, x), rtol=1e-10)
        assert info.residual > 1e3
    else:
        assert not np.isfinite(float(info.residual))


# --- 5. low rank ---------------------------------------------------------------------------

# well separated by magnitude: the top three are 40, -25 and 12
LOWRANK = np.concatenate([[40.0, -25.0, 12.0, -6.0, 3.0], np.linspace(0.1, 0.5, N - 5)])


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_lowrank_is_the_dense_projection_on_the_top_eigenspace(damping):
    a, b = _symmetric(LOWRANK, seed=4), _rhs()
    values, vectors = np.linalg.eigh(a)
    top = np.argsort(-np.abs(values))[:3]
    values, vectors = values[top], vectors[:, top]
    op = _quadratic_operator(a)
    options = dict(damping=damping, method="lowrank", rank=3, key=jax.random.key(0))
    x, info = jaxhvp.solve(op, jnp.asarray(b), **options)
    expected = vectors @ ((vectors.T @ b) / (values + damping))
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-12)
    residual = _relative_residual(a, damping, b, x)
    np.testing.assert_allclose(info.residual, residual, rtol=1e-10)
    assert residual > 0.5 and int(info.status) == SolveStatus.NOT_CONVERGED
    assert int(info.num_matvecs) == int(info.iterations) + 1
    # a right-hand side inside the top eigenspace is solved exactly
    inside = vectors @ np.array([1.0, 2.0, 3.0])
    x, info = jaxhvp.solve(op, jnp.asarray(inside), **options)
    np.testing.assert_allclose(x, np.linalg.solve(a + damping * np.eye(N), inside), rtol=1e-8)
    assert int(info.status) == SolveStatus.SUCCESS


# --- 6. preconditioners --------------------------------------------------------------------

SCALES = np.logspace(0, 2, N)  # parameters on scales 1 to 100


def _badly_scaled():
    """``S A0 S``: condition ~1e4 from the scaling, ~3 after Jacobi."""
    return SCALES[:, None] * _symmetric(np.linspace(1.0, 3.0, N), seed=6) * SCALES[None, :]


def _preconditioned_iterations(preconditioner):
    """CG's iterations on the badly scaled problem; checks the solution and the status."""
    a, b, damping = _badly_scaled(), _rhs(), 0.1
    x, info = jaxhvp.solve(
        _quadratic_operator(a),
        jnp.asarray(b),
        damping=damping,
        tol=1e-10,
        preconditioner=preconditioner,
    )
    assert int(info.status) == SolveStatus.SUCCESS
    np.testing.assert_allclose(x, np.linalg.solve(a + damping * np.eye(N), b), rtol=1e-7)
    np.testing.assert_allclose(
        info.residual, _relative_residual(a, damping, b, x), rtol=1e-6, atol=1e-11
    )
    return int(info.iterations)


def test_diagonal_preconditioners_cut_cg_iterations():
    plain = _preconditioned_iterations(None)  # 67
    op = _quadratic_operator(_badly_scaled())
    exact = jaxhvp.linalg.diagonal_preconditioner(op, method="exact")
    np.testing.assert_allclose(exact.diagonal, np.diag(_badly_scaled()), rtol=1e-12)
    jacobi = _preconditioned_iterations(exact)  # 18
    assert jacobi < plain / 2
    hutchinson = jaxhvp.linalg.diagonal_preconditioner(op, key=jax.random.key(0), num_probes=30)
    assert jacobi <= _preconditioned_iterations(hutchinson) < plain  # 33
    # a callable v -> M v with the same Jacobi matrix takes the same steps
    diagonal = jnp.asarray(np.diag(_badly_scaled()))
    assert _preconditioned_iterations(lambda v: v / (diagonal + 0.1)) == jacobi


def test_nystrom_preconditioner_cuts_cg_iterations():
    plain = _preconditioned_iterations(None)
    op = _quadratic_operator(_badly_scaled())
    nystrom = jaxhvp.linalg.nystrom_preconditioner(op, 10, key=jax.random.key(1))
    assert _preconditioned_iterations(nystrom) < plain  # 46 against 67
    # rank n: an exact inverse, one step
    exact = jaxhvp.linalg.nystrom_preconditioner(op, N, key=jax.random.key(1))
    assert _preconditioned_iterations(exact) <= 2


def test_nystrom_of_an_indefinite_operator_is_reported_nonfinite():
    """The factorisation needs a PSD operator; for an indefinite Hessian the solve says so."""
    op = _quadratic_operator(_symmetric(INDEFINITE, seed=3))
    nystrom = jaxhvp.linalg.nystrom_preconditioner(op, 10, key=jax.random.key(1))
    _, info = jaxhvp.solve(op, jnp.asarray(_rhs()), damping=20.0, preconditioner=nystrom)
    assert int(info.status) == SolveStatus.NONFINITE


def test_nystrom_values_approximate_the_top_eigenvalues_from_below():
    """For PSD A, the Nyström approximation is below A, so its eigenvalues are below A's;
    for a fast-decaying spectrum the gap is within the sketch's tail (Frangella, Tropp and
    Udell: E ||A - A_nys|| <= (1 + 2r/(l-r-1)) lam_{r+1} + e^2 l/(l-r) sum_{j>r} lam_j,
    here with margin: 10 x the tail beyond r = l / 2)."""
    eigenvalues = 10.0 ** -np.arange(N)
    a = _symmetric(eigenvalues, seed=7)
    rank = 10
    values = np.asarray(
        jaxhvp.linalg.nystrom_preconditioner(
            _quadratic_operator(a), rank, key=jax.random.key(2)
        ).values
    )
    true = np.sort(np.linalg.eigvalsh(a))[::-1][:rank]
    assert values.shape == (rank,) and np.all(np.diff(values) <= 0)
    assert np.all(values <= true + 1e-14)
    assert np.all(true - values <= 10 * eigenvalues[rank // 2 :].sum())
    np.testing.assert_allclose(values[:3], true[:3], rtol=1e-5)


# --- 7. transformations --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cg", "lissa"])
def test_solve_under_jit_equals_eager(method):
    op, matrix = _case("hessian")
    b = _vector(op.like)
    options = _options(method, matrix, 0.5)

    @jax.jit
    def solve(op, b, damping):
        return jaxhvp.solve(op, b, damping=damping, method=method, tol=1e-12, **options)

    jitted = solve(op, b, 0.5)
    eager = jaxhvp.solve(op, b, damping=0.5, method=method, tol=1e-12, **options)
    assert_trees_close(jitted[0], eager[0], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(jitted[1].status, eager[1].status)
    np.testing.assert_array_equal(jitted[1].iterations, eager[1].iterations)
    assert_trees_close(jitted[0], _dense_solve(matrix, 0.5, b), rtol=1e-9, atol=1e-11)


def test_vmap_over_right_hand_sides_equals_one_solve_each():
    op, matrix = _case("hessian")
    columns = [_vector(op.like, seed) for seed in (3, 4, 5)]
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *columns)
    # under jit: the same batched trace as a bare vmap, compiled rather than run op by op
    many = jax.jit(jax.vmap(lambda b: jaxhvp.solve(op, b, damping=0.5, tol=1e-12)))
    xs, infos = many(stacked)
    assert infos.status.shape == (3,)
    assert list(infos.message) == [solve_message(0)] * 3
    for i, b in enumerate(columns):
        x, info = jaxhvp.solve(op, b, damping=0.5, tol=1e-12)
        assert_trees_close(jax.tree_util.tree_map(lambda leaf, i=i: leaf[i], xs), x)
        assert int(infos.iterations[i]) == int(info.iterations)
        assert_trees_close(x, _dense_solve(matrix, 0.5, b), rtol=1e-9, atol=1e-11)


def test_changing_damping_tol_maxiter_or_scale_does_not_recompile():
    a, b = _symmetric(np.linspace(0.5, 5.0, N), seed=5), jnp.asarray(_rhs())
    op = _quadratic_operator(a)
    jaxhvp.solve(op, b)  # compiles, or finds the kernel of an earlier test
    jaxhvp.solve(op, b, method="lissa", scale=8.0)
    before = jaxhvp.cache_info()
    for damping, tol, maxiter in [(0.1, 1e-3, 5), (2.0, 1e-9, 100), (0, 1e-6, None)]:
        x, info = jaxhvp.solve(op, b, damping=damping, tol=tol, maxiter=maxiter)
        if maxiter is None:  # each setting really took effect
            np.testing.assert_allclose(x, np.linalg.solve(a, _rhs()), rtol=1e-4)
        elif maxiter == 5:
            assert int(info.iterations) == 5
    for scale in (6.0, 12.0):
        jaxhvp.solve(op, b, damping=1.0, method="lissa", scale=scale, maxiter=50)
    after = jaxhvp.cache_info()
    assert after.compilations == before.compilations
    assert after.misses == before.misses and after.uncached == before.uncached
    assert after.hits == before.hits + 5  # each call ran the cached kernel


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_warm_start_from_the_solution_takes_no_steps(method):
    a, b = _symmetric(np.linspace(0.5, 5.0, N), seed=5), jnp.asarray(_rhs())
    op = _quadratic_operator(a)
    x, info = jaxhvp.solve(op, b, damping=0.1, method=method, tol=1e-10)
    assert int(info.iterations) > 5
    again, info = jaxhvp.solve(op, b, x0=x, damping=0.1, method=method, tol=1e-10)
    assert int(info.iterations) == 0 and int(info.status) == SolveStatus.SUCCESS
    assert int(info.num_matvecs) == 2  # the residual of x0 and the final check
    np.testing.assert_array_equal(again, x)


# --- 8. status codes and errors ------------------------------------------------------------


@pytest.mark.parametrize("method", ["cg", "minres"])
def test_too_few_iterations_is_not_converged(method):
    a, b = _symmetric(SPREAD, seed=0), _rhs()
    x, info = jaxhvp.solve(_quadratic_operator(a), jnp.asarray(b), method=method, maxiter=3)
    assert int(info.status) == SolveStatus.NOT_CONVERGED and int(info.iterations) == 3
    assert info.message == solve_message(SolveStatus.NOT_CONVERGED)
    np.testing.assert_allclose(info.residual, _relative_residual(a, 0.0, b, x), rtol=1e-10)


METHOD_OPTIONS = {
    "cg": {},
    "minres": {},
    "lissa": dict(scale=10.0),
    "lowrank": dict(rank=3, key=jax.random.key(0)),
}


@pytest.mark.parametrize("method", list(METHOD_OPTIONS))
def test_a_nan_producing_operator_is_nonfinite(method):
    a = _symmetric(np.linspace(0.5, 5.0, N), seed=5)
    a[0, 0] = np.nan
    _, info = jaxhvp.solve(
        _quadratic_operator(a), jnp.asarray(_rhs()), method=method, **METHOD_OPTIONS[method]
    )
    assert int(info.status) == SolveStatus.NONFINITE
    assert info.message == "NaN or Inf appeared in a product or in the iterates."


def test_throw_raises_the_message_eagerly_and_refuses_jit():
    a, b = _symmetric(SPREAD, seed=0), jnp.asarray(_rhs())
    op = _quadratic_operator(a)
    with pytest.raises(jaxhvp.HVPError, match=r"above the tolerance.*after 2 iterations"):
        jaxhvp.solve(op, b, maxiter=2, throw=True)
    _, info = jaxhvp.solve(op, b, tol=1e-8, throw=True)  # success: returns normally
    assert int(info.status) == SolveStatus.SUCCESS
    with pytest.raises(jaxhvp.HVPError, match="throw=True needs an eager call"):
        jax.jit(lambda b: jaxhvp.solve(op, b, throw=True))(b)


def test_wrong_right_hand_sides_name_b_or_x0():
    op, _ = _case("hessian")
    good = _vector(op.like)
    wrong = [
        {"w": good["w"]},  # a leaf missing
        (good["w"], good["b"]),  # a tuple for a dict
        {"w": good["w"], "b": jnp.zeros(3)},  # a shape
        jax.tree_util.tree_map(lambda x: x.astype(np.float32), good),  # a dtype
    ]
    for b in wrong:
        with pytest.raises(jaxhvp.HVPError, match=r"^b given to solve must have the structure"):
            jaxhvp.solve(op, b)
        with pytest.raises(jaxhvp.HVPError, match=r"^x0 given to solve"):
            jaxhvp.solve(op, good, x0=b)
    with pytest.raises(TypeError, match=r"^b given to solve must be a pytree of arrays"):
        jaxhvp.solve(op, 1.0)


@pytest.mark.parametrize("op", [np.eye(8), lambda v: v, None], ids=["matrix", "function", "none"])
def test_a_non_operator_is_a_type_error(op):
    with pytest.raises(TypeError, match=r"^op given to solve must be a jaxhvp operator"):
        jaxhvp.solve(op, jnp.ones(8))


@pytest.mark.parametrize(
    ("options", "match"),
    [
        (dict(scale=2.0), "scale= is not an option of method='cg'"),
        (dict(rank=2), "rank= is not an option of method='cg'"),
        (dict(key=jax.random.key(0)), "key= is not an option of method='cg'"),
        (dict(method="minres", preconditioner=lambda v: v), "preconditioner= is not an option"),
        (dict(method="lissa", scale=9.0, rank=2), "rank= is not an option of method='lissa'"),
        (dict(method="lowrank", rank=2, key=jax.random.key(0), scale=1.0), "scale= is not"),
        (dict(method="lissa"), "method='lissa' in solve needs scale="),
        (dict(method="lowrank", rank=2), "method='lowrank' in solve needs rank="),
        (dict(method="lowrank", key=jax.random.key(0)), "method='lowrank' in solve needs rank="),
        (dict(method="lowrank", rank=9, key=jax.random.key(0)), "rank given to solve must be at"),
        (dict(damping=-1.0), "damping given to solve must be >= 0, but got -1.0"),
        (dict(damping=-1), "damping given to solve must be >= 0"),
        (dict(damping="0.1"), "damping given to solve must be a real number"),
        (dict(tol=0.0), "tol given to solve must be > 0"),
        (dict(maxiter=0), "maxiter given to solve must be an int >= 1"),
        (dict(method="newton"), "method given to solve must be one of 'cg', 'minres'"),
    ],
)
def test_wrong_options_raise_naming_the_option(options, match):
    op, _ = _case("hessian")
    with pytest.raises(jaxhvp.HVPError, match=re.escape(match)):
        jaxhvp.solve(op, _vector(op.like), **options)


def test_lowrank_takes_no_x0():
    op, _ = _case("hessian")
    b = _vector(op.like)
    with pytest.raises(jaxhvp.HVPError, match="method='lowrank' in solve takes no x0"):
        jaxhvp.solve(op, b, x0=b, method="lowrank", rank=2, key=jax.random.key(0))


def test_a_preconditioner_that_is_not_callable_is_a_type_error():
    op, _ = _case("hessian")
    with pytest.raises(TypeError, match="preconditioner given to solve must be a"):
        jaxhvp.solve(op, _vector(op.like), preconditioner=np.ones(8))


def test_solve_message_for_codes_and_arrays_of_codes():
    assert solve_message(0) == "The residual is within the tolerance."
    assert solve_message(SolveStatus.INDEFINITE).startswith("CG met a direction")
    codes = np.array([[0, 1], [2, 3]], np.int32)
    messages = solve_message(codes)
    assert messages.shape == (2, 2) and messages.dtype == object
    for code, message in zip(codes.ravel(), messages.ravel()):
        assert message == solve_message(int(code))
    assert len(set(messages.ravel())) == 4
    np.testing.assert_array_equal(solve_message(jnp.asarray(codes)), messages)
    for bad in (4, -1, 0.0, np.array([0, 7]), "0"):
        with pytest.raises(jaxhvp.HVPError, match="status code"):
            solve_message(bad)
    with pytest.raises(TypeError, match="needs a concrete status code"):
        jax.jit(solve_message)(0)


# --- 9. a peer: lineax's CG on the same damped GGN -----------------------------------------


def test_lineax_cg_on_a_damped_ggn_agrees():
    import lineax

    op, matrix = _case("ggn")
    damping = 0.3
    b = _vector(op.like)
    peer = lineax.linear_solve(
        (op + damping).as_lineax(psd=True), b, lineax.CG(rtol=1e-12, atol=1e-12)
    )
    x, info = jaxhvp.solve(op, b, damping=damping, tol=1e-12)
    assert int(info.status) == SolveStatus.SUCCESS
    assert_trees_close(x, peer.value, rtol=1e-9, atol=1e-11)
    assert_trees_close(x, _dense_solve(matrix, damping, b), rtol=1e-9, atol=1e-11)


def test_a_traced_maxiter_is_taken_under_jit():
    op = jaxhvp.hessian_operator(lambda w: jnp.sum(jnp.arange(1.0, 5.0) * w**2), jnp.ones(4))
    solve = jax.jit(lambda it: jaxhvp.solve(op, jnp.ones(4), maxiter=it)[1])
    assert int(solve(2).iterations) == 2
    assert int(solve(2).status) == jaxhvp.SolveStatus.NOT_CONVERGED
    assert int(solve(10).status) == jaxhvp.SolveStatus.SUCCESS
