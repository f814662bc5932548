"""scipy's own Newton-CG and trust-ncg tests, ported to ``jaxhvp.minimize`` and run against scipy.

The tests come from scipy's ``optimize/tests/test_optimize.py`` (``CheckOptimizeParameterized``,
``TestOptimizeSimple``, ``TestNewtonCg`` and module-level tests) and ``test_trustregion.py``
(``TestTrustRegionSolvers``); each keeps its scipy name, prefixed with the scipy class where
that says more. Each asserts what scipy's test asserts, on jaxhvp's result, and then that
jaxhvp did what ``scipy.optimize.minimize`` does on the same problem in float64: the same
``x``, the same number of iterations, the same outcome (status compared by meaning) and, where
the arithmetic is the same, the same evaluation counts.

scipy is given the JAX objective with exact derivatives (jit-compiled ``jax.grad`` and a
forward-over-reverse Hessian product, or the derivatives the scipy test supplies, written in
``jax.numpy``), so both optimisers run on identical math. scipy's finite-difference and dense
Hessian variants (``hess=``) have no counterpart: jaxhvp's Hessian products are exact.

Not ported: the ``fmin_ncg`` variants (no legacy interface), ``hess=`` callables and
``HessianUpdateStrategy`` (jaxhvp takes ``hessp`` or differentiates), the ``disp`` warnings
(``disp=True`` is rejected), ``x0`` of more than one dimension (jaxhvp takes any pytree), an
objective writing into ``x`` (gh-13740: JAX arrays are immutable), and anything that counts or
records the objective's evaluation points (``trace``, duplicate evaluations, calls after
``StopIteration``): inside a compiled loop those are not observable.
"""

import functools
import itertools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import jaxhvp

# --- the problems, in jax.numpy (constants stay numpy: x64 is on only inside tests) -----------


def rosen(x):
    """scipy.optimize.rosen."""
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def rosen_der(x):
    """scipy.optimize.rosen_der, written out (not by AD)."""
    middle = (
        200 * (x[1:-1] - x[:-2] ** 2) - 400 * (x[2:] - x[1:-1] ** 2) * x[1:-1] - 2 * (1 - x[1:-1])
    )
    first = -400 * x[0] * (x[1] - x[0] ** 2) - 2 * (1 - x[0])
    last = 200 * (x[-1] - x[-2] ** 2)
    return jnp.concatenate([first[None], middle, last[None]])


def rosen_hess_prod(x, p):
    """scipy.optimize.rosen_hess_prod, written out (not by AD)."""
    first = (1200 * x[0] ** 2 - 400 * x[1] + 2) * p[0] - 400 * x[0] * p[1]
    middle = (
        -400 * x[:-2] * p[:-2]
        + (202 + 1200 * x[1:-1] ** 2 - 400 * x[2:]) * p[1:-1]
        - 400 * x[1:-1] * p[2:]
    )
    last = -400 * x[-2] * p[-2] + 200 * p[-1]
    return jnp.concatenate([first[None], middle, last[None]])


def host_rosen(x):
    """scipy.optimize.rosen itself, run on the host: an objective JAX cannot differentiate."""
    return jax.pure_callback(
        lambda y: np.float64(scipy.optimize.rosen(np.asarray(y))),
        jax.ShapeDtypeStruct((), jnp.float64),
        x,
    )


def himmelblau(p):
    x, y = p[0], p[1]
    a = x * x + y - 11
    b = x + y * y - 7
    return a * a + b * b


HIMMELBLAU_X0 = [-0.27, -0.9]
HIMMELBLAU_XOPT = [3.0, 2.0]
HIMMELBLAU_MIN = 0.0

# CheckOptimize: constrained entropy maximisation (Berger et al. 1996).
MAXENT_F = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]], np.float64)
MAXENT_K = np.array([1.0, 0.3, 0.5])
MAXENT_SOLUTION = np.array([0.0, -0.524869316, 0.487525860])


def maxent(x):
    return jnp.log(jnp.sum(jnp.exp(jnp.asarray(MAXENT_F) @ x))) - jnp.asarray(MAXENT_K) @ x


def maxent_grad(x):
    features = jnp.asarray(MAXENT_F)
    return features.T @ jax.nn.softmax(features @ x) - jnp.asarray(MAXENT_K)


def maxent_hessp(x, p):
    """CheckOptimize.hessp: the test's dense Hessian, times p."""
    features = jnp.asarray(MAXENT_F)
    prob = jax.nn.softmax(features @ x)
    return features.T @ (prob[:, None] * (features - features.T @ prob)) @ p


# The trust-region tests' points (lists, as scipy's tests pass them).
X_OPT = [1.0, 1.0]
EASY_GUESS = [2.0, 2.0]
HARD_GUESS = [-1.2, 1.0]


# --- scipy on the same problem ----------------------------------------------------------------


@functools.cache
def _numpy_callbacks(fun, jac, hessp):
    """jit-compiled ``(value, gradient, Hessian product)`` of a JAX problem, once per problem."""
    if jac is True:
        value, grad = (lambda x, *a: fun(x, *a)[0]), (lambda x, *a: fun(x, *a)[1])
    else:
        value, grad = fun, jac or jax.grad(fun)
    if hessp is None:

        def hessp(x, p, *a):
            return jax.jvp(lambda y: grad(y, *a), (x,), (p,))[1]

    return jax.jit(value), jax.jit(grad), jax.jit(hessp)


def scipy_minimize(fun, x0, method, *, jac=None, hessp=None, args=(), **kwargs):
    """``scipy.optimize.minimize`` on a JAX problem: the objective with exact derivatives.

    ``jac`` and ``hessp`` as for ``jaxhvp.minimize``; without them, ``jax.grad`` and the
    forward-over-reverse product of the gradient.
    """
    value, grad, hvp = _numpy_callbacks(fun, jac, hessp)
    return scipy.optimize.minimize(
        lambda x, *a: float(np.asarray(value(x, *a)).reshape(())),
        np.asarray(x0, np.float64),
        args=args,
        jac=lambda x, *a: np.asarray(grad(x, *a)),
        hessp=lambda x, p, *a: np.asarray(hvp(x, p, *a)),
        method=method,
        **kwargs,
    )


def scipy_status(theirs, method):
    """scipy's status for ``method`` as the ``jaxhvp.MinimizeStatus`` of the same meaning.

    scipy's Newton-CG uses 2 for a failed line search and 3 for both a CG solve that did not
    converge and NaN; its trust-ncg uses 2 when the model predicts no decrease.
    """
    codes = jaxhvp.MinimizeStatus
    newton = method.lower() == "newton-cg"
    if theirs.status == 99:
        return codes.CALLBACK_STOPPED
    if newton and theirs.status == 3:
        return codes.CG_NOT_CONVERGED if "CG iterations" in theirs.message else codes.NONFINITE
    failed = codes.LINE_SEARCH_FAILED if newton else codes.NO_PREDICTED_DECREASE
    return {0: codes.SUCCESS, 1: codes.MAX_ITERATIONS, 2: failed}[theirs.status]


def assert_same_run(ours, theirs, method, *, counts=True, rtol=1e-8, atol=1e-10):
    """jaxhvp's result is scipy's: status (by meaning), success, nit, x, fun and counts.

    ``counts``: nfev and njev equal; nhev equal for Newton-CG; for trust-ncg at most scipy's
    less one per iteration (scipy spends a product per step on the model value, jaxhvp takes
    it from the CG recurrences).
    """
    status = int(ours.status)
    assert status == scipy_status(theirs, method), (status, theirs.status, theirs.message)
    assert bool(ours.success) == bool(theirs.success)
    assert int(ours.nit) == theirs.nit, (int(ours.nit), theirs.nit)
    assert np.shape(ours.x) == theirs.x.shape
    np.testing.assert_allclose(np.asarray(ours.x), theirs.x, rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(ours.fun).reshape(()), theirs.fun, rtol=rtol, atol=atol)
    if counts:
        ours_counts = (int(ours.nfev), int(ours.njev))
        assert ours_counts == (theirs.nfev, theirs.njev), (ours_counts, theirs)
        if method.lower() == "newton-cg":
            assert int(ours.nhev) == theirs.nhev, (int(ours.nhev), theirs.nhev)
        else:
            assert int(ours.nhev) <= theirs.nhev - theirs.nit, (int(ours.nhev), theirs.nhev)


def test_assert_same_run_checks_every_field():
    theirs = scipy.optimize.OptimizeResult(
        x=np.array([1.0, 2.0]),
        fun=3.0,
        nit=4,
        nfev=6,
        njev=6,
        nhev=9,
        status=0,
        success=True,
        message="Optimization terminated successfully.",
    )
    fields = dict(x=np.array([1.0, 2.0]), fun=3.0, nit=4, nfev=6, njev=6, nhev=9)
    ours = SimpleNamespace(**fields, status=0, success=True)
    assert_same_run(ours, theirs, "Newton-CG")
    assert_same_run(SimpleNamespace(**{**vars(ours), "nhev": 5}), theirs, "trust-ncg")
    wrong = [
        ("x", np.array([1.0, 2.1])),
        ("x", np.array([1.0, 2.0, 0.0])),
        ("fun", 3.1),
        ("nit", 5),
        ("nfev", 7),
        ("njev", 5),
        ("nhev", 8),
        ("status", 1),
        ("success", False),
    ]
    for name, value in wrong:
        with pytest.raises(AssertionError):
            assert_same_run(SimpleNamespace(**{**vars(ours), name: value}), theirs, "newton-cg")
    with pytest.raises(AssertionError):  # trust-ncg: at most scipy's nhev less one per iteration
        assert_same_run(SimpleNamespace(**{**vars(ours), "nhev": 6}), theirs, "trust-ncg")
    assert_same_run(SimpleNamespace(**{**vars(ours), "nfev": 7}), theirs, "newton-cg", counts=False)

    codes = jaxhvp.MinimizeStatus
    cases = [
        (2, "newton-cg", "precision loss", codes.LINE_SEARCH_FAILED),
        (2, "trust-ncg", "failure to predict improvement", codes.NO_PREDICTED_DECREASE),
        (3, "Newton-CG", "CG iterations didn't converge.", codes.CG_NOT_CONVERGED),
        (3, "newton-cg", "NaN result encountered.", codes.NONFINITE),
        (1, "trust-ncg", "Maximum number", codes.MAX_ITERATIONS),
    ]
    for status, method, message, expected in cases:
        result = scipy.optimize.OptimizeResult(status=status, message=message)
        assert scipy_status(result, method) == expected


class Recorder:
    """A callback of scipy's form, ``callback(intermediate_result)``: keeps each ``x`` (the
    object passed and a copy made at the call) and ``fun``; raises ``StopIteration`` at call
    ``stop_at``. scipy passes ``intermediate_result`` by keyword; so must jaxhvp."""

    def __init__(self, stop_at=None):
        self.xs, self.copies, self.funs = [], [], []
        self.stop_at = stop_at

    def __call__(self, intermediate_result):
        x = intermediate_result.x
        self.xs.append(x)
        self.copies.append(np.array(x, dtype=np.float64, copy=True))
        self.funs.append(float(np.asarray(intermediate_result.fun).reshape(())))
        if len(self.xs) == self.stop_at:
            raise StopIteration


def assert_same_iterates(ours, theirs):
    """Two Recorders saw the same iterates and values, in the same order."""
    assert len(ours.copies) == len(theirs.copies)
    np.testing.assert_allclose(np.array(ours.copies), np.array(theirs.copies), rtol=1e-10)
    np.testing.assert_allclose(ours.funs, theirs.funs, rtol=1e-10)


def maybe_jit(jit, solve, *args):
    return jax.jit(solve)(*args) if jit else solve(*args)


# --- TestNewtonCg -----------------------------------------------------------------------------


def test_newton_cg_rosenbrock():
    x0 = jnp.array([-1.2, 1.0])
    ours = jaxhvp.minimize(rosen, x0, method="Newton-CG", tol=1e-5)
    assert bool(ours.success), ours.message
    np.testing.assert_allclose(ours.x, [1.0, 1.0], rtol=1e-4)
    theirs = scipy_minimize(rosen, x0, "Newton-CG", tol=1e-5)
    assert_same_run(ours, theirs, "Newton-CG")  # scipy: nit 83, nfev 105, njev 105, nhev 142
    # A documented difference: jac is the gradient at x; scipy's is the previous point's.
    _, grad, _ = _numpy_callbacks(rosen, None, None)  # jax.grad(rosen), compiled for scipy
    np.testing.assert_allclose(ours.jac, grad(ours.x), rtol=1e-8, atol=1e-12)
    assert not np.allclose(theirs.jac, grad(theirs.x), rtol=1e-2)


def test_newton_cg_himmelblau():
    # The first Wolfe search (line_search_wolfe1) fails here and scipy retries with
    # line_search_wolfe2: jaxhvp must do the same to take scipy's steps.
    x0 = jnp.array(HIMMELBLAU_X0)
    ours = jaxhvp.minimize(himmelblau, x0, method="Newton-CG", tol=1e-6)
    assert bool(ours.success), ours.message
    np.testing.assert_allclose(ours.x, HIMMELBLAU_XOPT, rtol=1e-4)
    np.testing.assert_allclose(ours.fun, HIMMELBLAU_MIN, atol=1e-4)
    theirs = scipy_minimize(himmelblau, x0, "Newton-CG", tol=1e-6)
    assert_same_run(ours, theirs, "Newton-CG")  # scipy: nit 8, nfev 22, njev 22, nhev 11


def test_newton_cg_finite_difference():
    # scipy estimates the Hessian by differencing the gradient ('2-point'); jaxhvp's products
    # are exact, so the runs differ and only scipy's assertions apply to both.
    x0 = np.array([-1.2, 1.0])
    ours = jaxhvp.minimize(rosen, jnp.asarray(x0), method="Newton-CG", tol=1e-5)
    value, grad, _ = _numpy_callbacks(rosen, None, None)
    theirs = scipy.optimize.minimize(
        lambda x: float(value(x)),
        x0,
        jac=lambda x: np.asarray(grad(x)),
        hess="2-point",
        tol=1e-5,
        method="Newton-CG",
    )
    for result in (ours, theirs):
        assert bool(result.success), result.message
        np.testing.assert_allclose(result.x, [1.0, 1.0], rtol=1e-4)


# --- CheckOptimizeParameterized (the minimize wrapper; fmin_ncg has no counterpart) -----------


def assert_maxent_solved(ours):
    """CheckOptimizeParameterized's checks. Its funccalls == 7 counts two calls of the test's
    own after the solve: the solve's known-good count is 5."""
    np.testing.assert_allclose(maxent(ours.x), maxent(MAXENT_SOLUTION), atol=1e-6)
    assert int(ours.nfev) <= 5, int(ours.nfev)
    assert int(ours.njev) <= 22, int(ours.njev)
    # scipy's trace[3:5] (the 4th and 5th evaluation points) is not observable in a compiled
    # loop; the iterates are compared with scipy's through the callback tests instead.


def test_ncg():
    x0 = jnp.zeros(3)
    options = {"maxiter": 1000}
    ours = jaxhvp.minimize(maxent, x0, method="Newton-CG", jac=maxent_grad, options=options)
    assert_maxent_solved(ours)
    theirs = scipy_minimize(maxent, x0, "Newton-CG", jac=maxent_grad, options=options)
    assert_same_run(ours, theirs, "Newton-CG")  # scipy: nit 4, nfev 4, njev 4, nhev 6


def test_ncg_hessp():
    x0 = jnp.zeros(3)
    options = {"maxiter": 1000}
    kwargs = dict(jac=maxent_grad, hessp=maxent_hessp, options=options)
    ours = jaxhvp.minimize(maxent, x0, method="Newton-CG", **kwargs)
    assert_maxent_solved(ours)
    theirs = scipy_minimize(maxent, x0, "Newton-CG", **kwargs)
    assert_same_run(ours, theirs, "Newton-CG")


def test_ncg_negative_maxiter():
    # gh-8241: scipy stops at once with status 1.
    x0 = jnp.zeros(3)
    options = {"maxiter": -1}
    ours = jaxhvp.minimize(maxent, x0, method="Newton-CG", jac=maxent_grad, options=options)
    assert int(ours.status) == jaxhvp.MinimizeStatus.MAX_ITERATIONS
    theirs = scipy_minimize(maxent, x0, "Newton-CG", jac=maxent_grad, options=options)
    assert theirs.status == 1
    assert_same_run(ours, theirs, "Newton-CG")  # scipy: nit 0, nfev 1, njev 1, nhev 0


def cosine(x):
    return jnp.cos(x[0])


def cosine_jac(x):
    return -jnp.sin(x)


def test_ncg_zero_xtol():
    # gh-20214: xtol=0 ends when a step is exactly zero (the CG curvature test stops at once
    # once the gradient is at rounding level), with status 0.
    x0 = jnp.array([0.1])
    options = {"xtol": 0}
    ours = jaxhvp.minimize(cosine, x0, method="newton-cg", jac=cosine_jac, options=options)
    assert int(ours.status) == jaxhvp.MinimizeStatus.SUCCESS
    np.testing.assert_almost_equal(ours.x[0], np.pi)
    theirs = scipy_minimize(cosine, x0, "newton-cg", jac=cosine_jac, options=options)
    assert_same_run(ours, theirs, "newton-cg")  # scipy: nit 4, nfev 9, njev 9, nhev 4


# --- TestOptimizeSimple -----------------------------------------------------------------------


def tol_func(z):
    x, y = z[0], z[1]
    return x**2 * y**2 + x**4 + 1


def tol_dfunc(z):
    x, y = z[0], z[1]
    return jnp.stack([2 * x * y**2 + 4 * x**3, 2 * x**2 * y])


def test_minimize_tol_parameter():
    # scipy's x0 is the integer list [2, 2]; jaxhvp takes floating lists.
    x0 = [2.0, 2.0]
    runs = {}
    for tol in (1e-10, 1.0):
        ours = jaxhvp.minimize(tol_func, x0, method="newton-cg", jac=tol_dfunc, tol=tol)
        theirs = scipy_minimize(tol_func, x0, "newton-cg", jac=tol_dfunc, tol=tol)
        assert_same_run(ours, theirs, "newton-cg")  # scipy: nit 7 (tol 1e-10), 1 (tol 1)
        runs[tol] = ours
    assert tol_func(runs[1e-10].x) < tol_func(runs[1.0].x)


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_minimize_callback_copies_array(method):
    # The x passed to the callback is not changed afterwards, nor shared between calls.
    x0 = jnp.zeros(10)
    options = {"maxiter": 5}
    recorder = Recorder()
    ours = jaxhvp.minimize(rosen, x0, method=method, options=options, callback=recorder)
    assert int(ours.nit) == 5
    assert len(recorder.xs) > 2
    views = [np.asarray(x) for x in recorder.xs]
    assert all(np.array_equal(x, copy) for x, copy in zip(views, recorder.copies))
    assert not any(np.may_share_memory(x, y) for x, y in itertools.combinations(views, 2))
    # One call per iteration (trust-ncg: per trial step), with scipy's iterates.
    reference = Recorder()
    theirs = scipy_minimize(rosen, x0, method, options=options, callback=reference)
    assert_same_run(ours, theirs, method)
    assert_same_iterates(recorder, reference)
    assert len(recorder.xs) == int(ours.nit)


def no_increase_func(x):
    return jnp.sum((x - 1) ** 2)


def no_increase_bad_grad(x):
    # Purposely invalid gradient function, simulates a case where line searches start failing.
    return 2 * (x - 1) * (-1) - 2


def test_no_increase():
    # The solver never returns a value worse than the initial point's.
    x0 = jnp.array([2.0])
    f0 = no_increase_func(x0)
    options = {"maxiter": 20}
    kwargs = dict(jac=no_increase_bad_grad, options=options)
    ours = jaxhvp.minimize(no_increase_func, x0, method="newton-cg", **kwargs)
    np.testing.assert_allclose(no_increase_func(ours.x), ours.fun, rtol=1e-15)
    assert no_increase_func(ours.x) <= f0
    theirs = scipy_minimize(no_increase_func, x0, "newton-cg", **kwargs)
    # Both line searches (wolfe1, then wolfe2) fail: status 2 at nit 0, with scipy's counts.
    assert_same_run(ours, theirs, "newton-cg")  # scipy: nfev 23, njev 11


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
def test_respect_maxiter(method):
    x0 = jnp.zeros(10)
    options = {"maxiter": 4}
    recorder = Recorder()  # (so that it shares test_minimize_callback_copies_array's kernel)
    ours = jaxhvp.minimize(rosen, x0, method=method, options=options, callback=recorder)
    assert int(ours.nit) == len(recorder.xs) == 4
    assert int(ours.status) == jaxhvp.MinimizeStatus.MAX_ITERATIONS
    theirs = scipy_minimize(rosen, x0, method, options=options)
    assert_same_run(ours, theirs, method)


def step_func(x, scale):
    return scale * (x[0] - 1) ** 2


def step_grad(x, scale):
    # As scipy's test has it: half the true gradient.
    return scale * (x - 1)


@pytest.mark.parametrize("scale", [1.0, 1e50])
def test_initial_step_scaling(scale):
    # The first step is not huge even if the function and gradient are. (scipy skips
    # scale 1e-50 for Newton-CG: it returns x0 on seeing a small gradient.)
    x0 = jnp.array([-1.0])
    args = (jnp.asarray(scale),)
    ours = jaxhvp.minimize(step_func, x0, args, method="Newton-CG", jac=step_grad)
    assert bool(ours.success), ours.message
    np.testing.assert_allclose(ours.x, [1.0])
    assert int(ours.nit) <= 3
    # scipy records its first trial point; here the first iterate (a run stopped after one).
    first = jaxhvp.minimize(
        step_func, x0, args, method="Newton-CG", jac=step_grad, options={"maxiter": 1}
    )
    first_step = abs(float(first.x[0] - x0[0]))
    assert 0.5 < first_step < 3, first_step
    theirs = scipy_minimize(step_func, x0, "Newton-CG", jac=step_grad, args=(scale,))
    assert_same_run(ours, theirs, "Newton-CG")  # scipy: nit 2, nfev 2, njev 2, nhev 1


def nan_func(x):
    return jnp.sum(x) * jnp.nan


def nan_grad(x):
    return jnp.ones_like(x)


def nan_hessp(x, p):
    return p


@pytest.mark.parametrize(
    ("method", "hessp"),
    [("newton-cg", None), ("trust-ncg", nan_hessp)],  # scipy's trust-ncg needs a Hessian
    ids=["newton-cg", "trust-ncg"],
)
def test_nan_values(method, hessp):
    # A NaN objective is a failed exit. (scipy's second objective, random values then NaN
    # from the third call on, keeps state between calls: no pure-function counterpart.)
    x0 = jnp.array([1.0])
    options = {"maxiter": 20}
    kwargs = dict(jac=nan_grad, options=options) | ({} if hessp is None else {"hessp": hessp})
    ours = jaxhvp.minimize(nan_func, x0, method=method, **kwargs)
    assert not bool(ours.success)
    with np.errstate(invalid="ignore"):
        theirs = scipy_minimize(nan_func, x0, method, jac=nan_grad, hessp=hessp, options=options)
    assert theirs.success is False
    # Not scipy's status: scipy iterates on (to maxiter, status 1, or to a NaN step, status 3);
    # jaxhvp reports the NaN at once.
    assert int(ours.status) == jaxhvp.MinimizeStatus.NONFINITE
    assert int(ours.nit) == 0


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_callback_stopiteration(method, jit):
    # A callback raising StopIteration stops the run where maxiter would have. The callback
    # is scipy's keyword-only one (its interface 1): minimize passes intermediate_result= by
    # name, as scipy does. (scipy's class interface differs only in how scipy recognises it;
    # its legacy callback(xk) has no counterpart.)
    maxiter = 5
    calls = []

    def callback(*, intermediate_result):
        x = np.asarray(intermediate_result.x)
        np.testing.assert_allclose(intermediate_result.fun, scipy.optimize.rosen(x), rtol=1e-12)
        calls.append(None)
        if len(calls) == maxiter:
            raise StopIteration

    x0 = [1.1] * 5
    res = maybe_jit(
        jit,
        lambda x: jaxhvp.minimize(rosen, x, method=method, callback=callback),
        jnp.array(x0) if jit else x0,
    )
    assert int(res.nit) == maxiter
    assert int(res.status) == jaxhvp.MinimizeStatus.CALLBACK_STOPPED == 99
    assert not bool(res.success)
    assert res.message == "`callback` raised `StopIteration`."
    # The same run limited by maxiter instead (scipy's, to save a compilation).
    ref = scipy_minimize(rosen, x0, method, options={"maxiter": maxiter})
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-8)
    np.testing.assert_allclose(res.fun, ref.fun, rtol=1e-8)

    calls.clear()
    theirs = scipy_minimize(rosen, x0, method, callback=callback)
    assert theirs.status == 99 and theirs.message == res.message
    assert_same_run(res, theirs, method)


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
def test_attributes_present(method):
    # TestOptimizeResultAttributes. scipy's x0 is the integer list [5, 5].
    x0 = [5.0, 5.0]
    ours = jaxhvp.minimize(rosen, x0, method=method)
    for attribute in ["nit", "nfev", "x", "success", "status", "fun", "message"]:
        assert hasattr(ours, attribute)
    assert isinstance(ours.message, str)  # gh-13001
    theirs = scipy_minimize(rosen, x0, method)
    assert ours.message == theirs.message.removeprefix("Warning: ")
    assert_same_run(ours, theirs, method)  # scipy: Newton-CG nit 42, trust-ncg nit 39


def square(x):
    return x * x  # one element, not a scalar, as in scipy's test


def square_jac(x):
    return 2.0 * x


@pytest.mark.parametrize("method", ["Newton-CG", "trust-ncg"])
def test_result_x_shape_when_len_x_is_one(method):
    x0 = jnp.array([0.1])
    ours = jaxhvp.minimize(square, x0, method=method, jac=square_jac)
    assert ours.x.shape == (1,)
    theirs = scipy_minimize(square, x0, method, jac=square_jac)
    assert_same_run(ours, theirs, method)


def test_empty_x0():
    # Not a scipy test: scipy runs on an empty x0 (its iteration limit, 200 n, is 0; Newton-CG
    # reports status 1, trust-ncg status 0). jaxhvp raises instead: there is nothing to solve,
    # and a result of empty arrays would only move the error downstream (docs/optimize.md).
    for method in ("newton-cg", "trust-ncg"):
        assert scipy_minimize(rosen, np.zeros(0), method).nit == 0
        with pytest.raises(jaxhvp.HVPError, match="x0 has no elements"):
            jaxhvp.minimize(rosen, jnp.zeros(0), method=method)


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_supplied_derivatives_are_used(method):
    # Not a scipy test: with jac and hessp given, the objective is never differentiated
    # (here it cannot be: it runs scipy.optimize.rosen on the host). Under jit: eagerly,
    # jaxhvp warns that an objective calling back into Python runs uncached.
    kwargs = dict(jac=rosen_der, hessp=rosen_hess_prod)
    x0 = jnp.array(EASY_GUESS)
    ours = jax.jit(lambda x: jaxhvp.minimize(host_rosen, x, method=method, **kwargs))(x0)
    theirs = scipy_minimize(host_rosen, x0, method, **kwargs)
    assert_same_run(ours, theirs, method)


# --- TestTrustRegionSolvers (test_trustregion.py; the dogleg, trust-krylov and trust-exact
# --- parts are other methods, and scipy's dense hess= is given here as AD products) -----------


def test_trust_region_solver_concordance():
    # trust-ncg and newton-cg parts; scipy's "dogleg takes fewer iterations than newton-cg"
    # compares with a method jaxhvp does not have.
    for x0, method in itertools.product((EASY_GUESS, HARD_GUESS), ("trust-ncg", "newton-cg")):
        ours = jaxhvp.minimize(rosen, x0, method=method, tol=1e-8)
        np.testing.assert_allclose(X_OPT, ours.x)
        theirs = scipy_minimize(rosen, x0, method, tol=1e-8)
        assert_same_run(ours, theirs, method)


def test_trust_ncg_hessp():
    for x0 in (EASY_GUESS, HARD_GUESS, X_OPT):
        ours = jaxhvp.minimize(rosen, x0, method="trust-ncg", hessp=rosen_hess_prod, tol=1e-8)
        np.testing.assert_allclose(X_OPT, ours.x)
        theirs = scipy_minimize(rosen, x0, "trust-ncg", hessp=rosen_hess_prod, tol=1e-8)
        assert_same_run(ours, theirs, "trust-ncg")


def test_trust_ncg_start_in_optimum():
    ours = jaxhvp.minimize(rosen, X_OPT, method="trust-ncg", tol=1e-8)
    np.testing.assert_allclose(X_OPT, ours.x)
    theirs = scipy_minimize(rosen, X_OPT, "trust-ncg", tol=1e-8)
    assert_same_run(ours, theirs, "trust-ncg")  # nit 0: the gradient is 0 at the start


def test_trust_ncg_callback():
    # test_dogleg_callback, for trust-ncg (return_all has no counterpart: the callback's
    # iterates stand in for allvecs[1:]).
    maxiter = 5
    recorder = Recorder()
    ours = jaxhvp.minimize(
        rosen, HARD_GUESS, method="trust-ncg", callback=recorder, options={"maxiter": maxiter}
    )
    assert len(recorder.xs) == maxiter
    np.testing.assert_allclose(ours.x, recorder.copies[-1])
    reference = Recorder()
    theirs = scipy_minimize(
        rosen, HARD_GUESS, "trust-ncg", callback=reference, options={"maxiter": maxiter}
    )
    assert_same_run(ours, theirs, "trust-ncg")
    assert_same_iterates(recorder, reference)
    # scipy's accumulator: the callback's x, summed, are the iterates.
    accum = sum(np.asarray(x) for x in recorder.xs)
    np.testing.assert_allclose(accum, sum(reference.copies), rtol=1e-10)


# --- not scipy tests: counts in corner cases, against scipy ----------------------------------


def beale(x):
    y = jnp.array([1.5, 2.25, 2.625])
    k = jnp.arange(1.0, 4.0)
    return jnp.sum((y - x[0] * (1.0 - x[1] ** k)) ** 2)


def test_newton_cg_counts_when_the_zoom_search_runs_out_of_doublings():
    # From here the zoom search doubles its step 10 times and returns the last one without
    # its slope: scipy then evaluates the gradient at the next iteration, and counts it.
    for x0 in ([-0.27, -0.92], [-0.270845, -0.923039]):
        options = {"maxiter": 2}
        ours = jaxhvp.minimize(himmelblau, jnp.array(x0), method="newton-cg", options=options)
        theirs = scipy_minimize(himmelblau, jnp.array(x0), "newton-cg", options=options)
        assert_same_run(ours, theirs, "newton-cg")


@pytest.mark.parametrize("maxiter", [11, 12])
def test_trust_ncg_counts_a_repeated_trial_point_once(maxiter):
    # A rejected step inside the region is tried again unchanged after the radius shrinks:
    # scipy's objective keeps the last point's value and does not count it again.
    x0 = jnp.array([-4.0, -4.0])
    options = {"maxiter": maxiter}
    ours = jaxhvp.minimize(beale, x0, method="trust-ncg", options=options)
    theirs = scipy_minimize(beale, x0, "trust-ncg", options=options)
    assert_same_run(ours, theirs, "trust-ncg")


@pytest.mark.parametrize(
    "kwargs",
    [{"tol": np.inf}, {"options": {"maxiter": 2.5}}, {"options": {"workers": None}}],
    ids=["tol-inf", "maxiter-2.5", "workers"],
)
def test_newton_cg_option_values_as_scipy(kwargs):
    # scipy's loop test (the step's 1-norm against n * xtol: none with xtol inf), its real
    # maxiter (k >= 2.5 stops after 3), and workers (for finite differences: ignored).
    x0 = jnp.array([-1.2, 1.0])
    ours = jaxhvp.minimize(rosen, x0, method="newton-cg", **kwargs)
    theirs = scipy_minimize(rosen, x0, "newton-cg", **kwargs)
    assert_same_run(ours, theirs, "newton-cg")
