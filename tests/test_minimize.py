"""jaxhvp.minimize against scipy.optimize.minimize on the same problems, plus its contract:
failure reporting through status, pytrees, jit, vmap, errors, and the training-step API.

The reference is scipy itself, run on the same float64 objective with jit-compiled JAX
callbacks for the function, the gradient and the Hessian-vector product (so both see the
same derivatives and only the optimisers differ).
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from conftest import assert_trees_close

import jaxhvp
from jaxhvp import HVPError, MinimizeStatus

METHODS = ["newton-cg", "trust-ncg"]

# --- problems: the Moré-Garbow-Hillstrom collection, chained Rosenbrock, logistic regression ---


def extended_rosenbrock(x):
    """MGH problem 21: n/2 decoupled Rosenbrock pairs."""
    odd, even = x[0::2], x[1::2]
    return jnp.sum(100.0 * (even - odd**2) ** 2 + (1.0 - odd) ** 2)


def chained_rosenbrock(x):
    """scipy.optimize.rosen: the chained form."""
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def beale(x):
    a, b = x[0], x[1]
    return (1.5 - a + a * b) ** 2 + (2.25 - a + a * b**2) ** 2 + (2.625 - a + a * b**3) ** 2


def powell_singular(x):
    a, b, c, d = x[0], x[1], x[2], x[3]
    return (a + 10 * b) ** 2 + 5 * (c - d) ** 2 + (b - 2 * c) ** 4 + 10 * (a - d) ** 4


def wood(x):
    a, b, c, d = x[0], x[1], x[2], x[3]
    return (
        100 * (b - a**2) ** 2
        + (1 - a) ** 2
        + 90 * (d - c**2) ** 2
        + (1 - c) ** 2
        + 10 * (b + d - 2) ** 2
        + 0.1 * (b - d) ** 2
    )


def helical_valley(x):
    a, b, c = x[0], x[1], x[2]
    theta = jnp.arctan2(b, a) / (2 * jnp.pi)
    return 100 * ((c - 10 * theta) ** 2 + (jnp.sqrt(a**2 + b**2) - 1) ** 2) + c**2


def brown_badly_scaled(x):
    a, b = x[0], x[1]
    return (a - 1e6) ** 2 + (b - 2e-6) ** 2 + (a * b - 2) ** 2


def freudenstein_roth(x):
    a, b = x[0], x[1]
    return (-13 + a + ((5 - b) * b - 2) * b) ** 2 + (-29 + a + ((b + 1) * b - 14) * b) ** 2


def logistic_regression(w, features, labels, lam):
    """Mean logistic loss with an L2 penalty: strongly convex, a unique minimiser."""
    z = features @ w
    return jnp.mean(jnp.logaddexp(0.0, z) - labels * z) + 0.5 * lam * (w @ w)


def logistic_data(m=200, d=20, seed=0):
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((m, d))
    labels = (features @ rng.standard_normal(d) + 0.5 * rng.standard_normal(m) > 0).astype(float)
    return features, labels


def rosenbrock_start(n):
    return np.tile([-1.2, 1.0], n // 2)


# name -> (function, x0); the MGH standard starting points.
PROBLEMS = {
    "beale": (beale, [1.0, 1.0]),
    "powell-singular": (powell_singular, [3.0, -1.0, 0.0, 1.0]),
    "wood": (wood, [-3.0, -1.0, -3.0, -1.0]),
    "helical-valley": (helical_valley, [-1.0, 0.0, 0.0]),
    "brown-badly-scaled": (brown_badly_scaled, [1.0, 1.0]),
    "freudenstein-roth": (freudenstein_roth, [0.5, -2.0]),
    "extended-rosenbrock-2": (extended_rosenbrock, rosenbrock_start(2)),
    "extended-rosenbrock-100": (extended_rosenbrock, rosenbrock_start(100)),
    "chained-rosenbrock-100": (chained_rosenbrock, rosenbrock_start(100)),
}


def scipy_minimize(fun, x0, method, args=(), options=None):
    """scipy.optimize.minimize with jit-compiled JAX callbacks for fun, jac and hessp."""
    value, grad, hessp = _callbacks(fun)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on failures that the tests expect
        return scipy.optimize.minimize(
            lambda x, *a: float(value(x, *a)),
            np.asarray(x0, np.float64),
            args=args,
            jac=lambda x, *a: np.asarray(grad(x, *a)),
            hessp=lambda x, p, *a: np.asarray(hessp(x, p, *a)),
            method=method,
            options=options,
        )


@functools.cache
def _callbacks(fun):
    """Compiled once per function (the tests call scipy many times on the same problems)."""
    hessp = jax.jit(lambda x, p, *a: jax.jvp(lambda y: jax.grad(fun)(y, *a), (x,), (p,))[1])
    return jax.jit(fun), jax.jit(jax.grad(fun)), hessp


def assert_agrees_with_scipy(ours, theirs, f0):
    """Same outcome as scipy, the same final objective or lower, and a similar iteration count.

    * status and success as scipy's (its codes mapped to ours);
    * final objective at most scipy's plus ``1e-6 * max(1, |f(x0)|)``. Where the floating-point
      trajectories coincide (most problems here) the values agree to rounding; where rounding
      differences in the inner CG send them apart (Newton-CG and trust-ncg on the chained
      Rosenbrock), both stop by the same step-size or gradient rule, but not at the same
      point, and Newton-CG's step-size rule stops it well short of the minimum;
    * iterations within 10% (plus 2) of scipy's: equal where the trajectories coincide; on
      the chained Rosenbrock 100-d they differ by under 6%.
    """
    status = int(ours.status)
    assert SCIPY_STATUS[theirs.status] == status, (ours, theirs)
    assert bool(ours.success) == theirs.success
    assert float(ours.fun) <= theirs.fun + 1e-6 * max(1.0, abs(f0))
    assert abs(int(ours.nit) - theirs.nit) <= 0.1 * theirs.nit + 2, (int(ours.nit), theirs.nit)


# scipy's status for these methods -> ours: Newton-CG 2 is a line-search failure and 3 a CG
# failure or NaN; trust-ncg's 2 is "failure to predict improvement". The problems here only
# produce 0 and 1.
SCIPY_STATUS = {0: MinimizeStatus.SUCCESS, 1: MinimizeStatus.MAX_ITERATIONS}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_agrees_with_scipy_on_standard_problems(name, method):
    fun, x0 = PROBLEMS[name]
    x0 = jnp.asarray(x0, jnp.float64)
    value, grad, _ = _callbacks(fun)  # the jit-compiled fun and jax.grad(fun) scipy runs on
    ours = jaxhvp.minimize(fun, x0, method=method)
    theirs = scipy_minimize(fun, x0, method)
    assert_agrees_with_scipy(ours, theirs, float(value(x0)))
    assert ours.x.dtype == jnp.float64 and ours.x.shape == x0.shape
    # Counters are counted as scipy counts them: identical where the trajectories are.
    # (scipy's trust-ncg also counts a product per iteration for the model value, and two
    # per negative-curvature exit, which jaxhvp gets from the CG recurrences instead.)
    if np.allclose(ours.x, theirs.x, rtol=1e-8, atol=1e-12):
        assert (int(ours.nit), int(ours.nfev), int(ours.njev)) == (
            theirs.nit,
            theirs.nfev,
            theirs.njev,
        )
        if method == "newton-cg":
            assert int(ours.nhev) == theirs.nhev
        else:
            assert int(ours.nhev) + theirs.nit < theirs.nhev
    # Compiled differently, so equal up to rounding at the problem's scale (up to 1e6 here).
    assert_trees_close(ours.jac, grad(ours.x), rtol=1e-8, atol=1e-6)
    assert_trees_close(ours.fun, value(ours.x))


@pytest.mark.parametrize("method", METHODS)
def test_extended_rosenbrock_1000(method):
    x0 = jnp.asarray(rosenbrock_start(1000))
    ours = jaxhvp.minimize(extended_rosenbrock, x0, method=method)
    theirs = scipy_minimize(extended_rosenbrock, x0, method)
    assert_agrees_with_scipy(ours, theirs, float(_callbacks(extended_rosenbrock)[0](x0)))
    assert int(ours.nit) == theirs.nit  # decoupled pairs: the 2-d trajectory, 500 times
    np.testing.assert_allclose(ours.x, 1.0, atol=1e-3)


@pytest.mark.parametrize("method", METHODS)
def test_regularised_logistic_regression(method):
    features, labels = logistic_data()
    args = (jnp.asarray(features), jnp.asarray(labels), jnp.asarray(1e-2))
    x0 = jnp.zeros(features.shape[1])
    ours = jaxhvp.minimize(logistic_regression, x0, args, method=method)
    theirs = scipy_minimize(logistic_regression, x0, method, args=args)
    assert_agrees_with_scipy(ours, theirs, float(_callbacks(logistic_regression)[0](x0, *args)))
    assert int(ours.nit) == theirs.nit
    # Strongly convex: both find the one minimiser.
    np.testing.assert_allclose(ours.x, theirs.x, atol=1e-5)


def test_float32():
    fun, x0 = extended_rosenbrock, jnp.asarray(rosenbrock_start(10), jnp.float32)
    for method in METHODS:
        result = jaxhvp.minimize(fun, x0, method=method)
        assert result.x.dtype == jnp.float32 and result.fun.dtype == jnp.float32
        assert bool(result.success)
        np.testing.assert_allclose(result.x, 1.0, atol=1e-2)


# --- failures are reported through status, never raised from inside the loop ------------------


@pytest.mark.parametrize("method", METHODS)
def test_maxiter_too_small(method):
    fun, x0 = PROBLEMS["extended-rosenbrock-2"]
    ours = jaxhvp.minimize(fun, jnp.asarray(x0), method=method, options={"maxiter": 3})
    theirs = scipy_minimize(fun, x0, method, options={"maxiter": 3})
    assert int(ours.status) == MinimizeStatus.MAX_ITERATIONS == theirs.status
    assert not bool(ours.success)
    assert int(ours.nit) == theirs.nit == 3
    assert ours.message == "Maximum number of iterations has been exceeded."
    np.testing.assert_allclose(ours.x, theirs.x, rtol=1e-10)


def nan_prone(x, scale):
    """NaN everywhere for a NaN scale; else a NaN Hessian product where x[0] = 0 (the second
    derivative of |x0|^1.5 there is infinite), while f and its gradient are finite."""
    return scale * jnp.sum((x - 1.0) ** 2) + 0.1 * jnp.abs(x[0]) ** 1.5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    ("x0", "scale"), [([1.0, 2.0], np.nan), ([0.0, 3.0], 1.0)], ids=["objective", "product"]
)
def test_nan_is_reported(method, x0, scale):
    x0 = jnp.asarray(x0)
    result = jaxhvp.minimize(nan_prone, x0, (jnp.asarray(scale),), method=method)
    assert int(result.status) == MinimizeStatus.NONFINITE
    assert not bool(result.success)
    assert "NaN or Inf" in result.message
    assert_trees_close(result.x, x0)
    assert int(result.nit) == 0


@pytest.mark.parametrize("method", METHODS)
def test_nan_at_trial_points_is_stepped_back_from(method):
    # A log barrier: the full Newton step from x0 leaves the domain, where f is NaN.
    def fun(x):
        return jnp.sum(x) - 0.1 * jnp.sum(jnp.log(x)) - jnp.sum(jnp.log(1.0 - x))

    result = jaxhvp.minimize(fun, jnp.array([0.5, 0.9]), method=method)
    assert bool(result.success), result.message
    # f'(x) = 1 - 0.1/x + 1/(1-x) = 0: the smaller root of x^2 - 2.1 x + 0.1.
    np.testing.assert_allclose(result.x, (2.1 - np.sqrt(2.1**2 - 0.4)) / 2, rtol=1e-6)


def inconsistent(x):
    return jnp.sum(x**2)


inconsistent = jax.custom_jvp(inconsistent)
inconsistent.defjvp(
    lambda primals, tangents: (inconsistent(*primals), -2 * primals[0] @ tangents[0])
)


@pytest.mark.parametrize("method", METHODS)
def test_no_decrease_possible(method):
    # A derivative with the wrong sign: every step predicted to decrease f increases it.
    x0 = jnp.array([1.0, 2.0])
    ours = jaxhvp.minimize(inconsistent, x0, method=method)
    theirs = scipy_minimize(inconsistent, x0, method)
    expected = {
        "newton-cg": MinimizeStatus.LINE_SEARCH_FAILED,  # scipy's 2
        "trust-ncg": MinimizeStatus.NO_PREDICTED_DECREASE,  # scipy's 2
    }[method]
    assert int(ours.status) == expected and theirs.status == 2
    assert int(ours.nit) == theirs.nit
    assert_trees_close(ours.x, x0)


def test_cg_iteration_limit():
    fun, x0 = PROBLEMS["extended-rosenbrock-100"]
    result = jaxhvp.minimize(fun, jnp.asarray(x0), method="newton-cg", options={"cg_maxiter": 1})
    assert int(result.status) == MinimizeStatus.CG_NOT_CONVERGED
    assert "CG iterations didn't converge" in result.message


def test_throw_raises_eagerly_and_when_compiled():
    fun, x0 = PROBLEMS["extended-rosenbrock-2"]
    options = {"maxiter": 2, "throw": True}
    with pytest.raises(RuntimeError, match="Maximum number of iterations"):
        jaxhvp.minimize(fun, jnp.asarray(x0), method="trust-ncg", options=options)
    solve = jax.jit(lambda x: jaxhvp.minimize(fun, x, method="trust-ncg", options=options).x)
    with pytest.raises(RuntimeError, match="Maximum number of iterations"):
        jax.block_until_ready(solve(jnp.asarray(x0)))
    ok = jaxhvp.minimize(fun, jnp.asarray(x0), method="trust-ncg", options={"throw": True})
    assert bool(ok.success)


def test_messages():
    for status in MinimizeStatus:
        assert isinstance(jaxhvp.minimize_message(status), str)
    codes = np.array([[0, 1], [3, 5]])
    messages = jaxhvp.minimize_message(codes)
    assert messages.shape == (2, 2)
    assert messages[1, 0] == jaxhvp.minimize_message(MinimizeStatus.NONFINITE)
    with pytest.raises(HVPError, match="Unknown status"):
        jaxhvp.minimize_message(17)
    with pytest.raises(TypeError, match="concrete status"):
        jax.jit(jaxhvp.minimize_message)(0)


# --- pytrees, jit, vmap -----------------------------------------------------------------------


def pytree_rosenbrock(params, target):
    flat = jnp.concatenate([params["a"], params["b"].ravel()])
    return chained_rosenbrock(flat) + jnp.sum((params["c"] - target) ** 2)


def flat_pytree_rosenbrock(x, target):
    """pytree_rosenbrock over the flattened parameters, for scipy (one compilation for both
    methods: target is an argument, not a constant of a closure made per test)."""
    return pytree_rosenbrock({"a": x[:1], "b": x[1:5].reshape(2, 2), "c": x[5]}, target)


@pytest.mark.parametrize("method", METHODS)
def test_pytree_x0(method):
    target = jnp.asarray(3.0)
    x0 = {"a": jnp.array([-1.2]), "b": jnp.array([[1.0, -1.2], [1.0, 0.5]]), "c": jnp.zeros(())}
    result = jaxhvp.minimize(pytree_rosenbrock, x0, (target,), method=method)
    assert bool(result.success)
    assert jax.tree_util.tree_structure(result.x) == jax.tree_util.tree_structure(x0)
    assert jax.tree_util.tree_structure(result.jac) == jax.tree_util.tree_structure(x0)

    x0_flat = jnp.concatenate([x0["a"], x0["b"].ravel(), x0["c"][None]])
    theirs = scipy_minimize(flat_pytree_rosenbrock, x0_flat, method, args=(target,))
    assert int(result.nit) == theirs.nit
    ours_flat = jnp.concatenate([result.x["a"], result.x["b"].ravel(), result.x["c"][None]])
    np.testing.assert_allclose(ours_flat, theirs.x, rtol=1e-8)


def test_option_values_are_not_recompiles():
    fun, x0 = PROBLEMS["beale"]
    x0 = jnp.asarray(x0)
    jaxhvp.minimize(fun, x0, method="trust-ncg")
    before = jaxhvp.cache_info().compilations
    for options in ({"maxiter": 3}, {"gtol": 1e-2, "eta": 0.1}, {"initial_trust_radius": 0.1}):
        result = jaxhvp.minimize(fun, x0, method="trust-ncg", options=options)
        theirs = scipy_minimize(fun, x0, "trust-ncg", options=options)
        assert int(result.nit) == theirs.nit
    assert jaxhvp.cache_info().compilations == before


def test_eager_calls_compile_once():
    features, labels = logistic_data(m=50, d=5)
    before = jaxhvp.cache_info().compilations
    for lam in (1e-1, 1e-2, 1e-3):  # a new closure and new data each call
        data = (jnp.asarray(features), jnp.asarray(labels), jnp.asarray(lam))
        jaxhvp.minimize(lambda w: logistic_regression(w, *data), jnp.zeros(5), method="trust-ncg")
    assert jaxhvp.cache_info().compilations == before + 1


@pytest.mark.parametrize("method", METHODS)
def test_vmap_over_x0(method):
    starts = jnp.array([[-1.2, 1.0], [2.0, 2.0], [0.0, 0.0], [-0.5, 3.0]])
    solve = jax.jit(jax.vmap(lambda x: jaxhvp.minimize(extended_rosenbrock, x, method=method)))
    batched = solve(starts)
    singles = [jaxhvp.minimize(extended_rosenbrock, x, method=method) for x in starts]
    expected = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *singles)
    assert_trees_close(batched, expected)
    assert list(jaxhvp.minimize_message(batched.status)) == [s.message for s in singles]


@pytest.mark.parametrize("method", METHODS)
def test_vmap_over_args(method):
    features, labels = logistic_data()  # test_regularised_logistic_regression's data
    d = features.shape[1]
    lams = jnp.array([1e-1, 1e-2, 1e-3])
    data = (jnp.asarray(features), jnp.asarray(labels))

    def solve(lam):
        return jaxhvp.minimize(logistic_regression, jnp.zeros(d), (*data, lam), method=method)

    batched = jax.jit(jax.vmap(solve))(lams)
    for i, lam in enumerate(lams):
        # lam as test_regularised_logistic_regression passes it (a weakly typed scalar): the
        # compiled scipy callbacks of that test serve this one.
        lam = jnp.asarray(float(lam))
        theirs = scipy_minimize(logistic_regression, np.zeros(d), method, args=(*data, lam))
        assert int(batched.nit[i]) == theirs.nit
        np.testing.assert_allclose(batched.x[i], theirs.x, atol=1e-6)
    assert bool(jnp.all(batched.success))


# --- options and errors -----------------------------------------------------------------------


def test_method_names_and_tol():
    fun, x0 = PROBLEMS["beale"]
    x0 = jnp.asarray(x0)
    a = jaxhvp.minimize(fun, x0, method="Newton-CG", tol=1e-1)
    b = jaxhvp.minimize(fun, x0, method="newton-cg", options={"xtol": 1e-1})
    assert_trees_close(a, b)
    assert int(a.nit) == scipy_minimize(fun, x0, "Newton-CG", options={"xtol": 1e-1}).nit
    assert int(a.nit) < int(jaxhvp.minimize(fun, x0, method="newton-cg").nit)
    c = jaxhvp.minimize(fun, x0, method="TRUST-NCG", tol=1e-2, options={"gtol": 1e-8})
    theirs = scipy_minimize(fun, x0, "trust-ncg", options={"gtol": 1e-8})
    assert int(c.nit) == theirs.nit  # an option wins over tol, as in scipy
    # scipy's eps (a finite-difference step) and disp=False are accepted and change nothing.
    options = {"gtol": 1e-8, "eps": 1e-8, "disp": False}
    assert_trees_close(jaxhvp.minimize(fun, x0, method="trust-ncg", options=options), c)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "bfgs"}, HVPError, r"Unknown method 'bfgs'.*'newton-cg', 'trust-ncg'"),
        ({"method": 3}, TypeError, "method must be a string"),
        ({"method": "trust-ncg", "options": {"gtool": 1.0}}, HVPError, "Unknown option 'gtool'"),
        ({"method": "newton-cg", "options": {"gtol": 1.0}}, HVPError, "valid options are"),
        ({"method": "trust-ncg", "options": {"return_all": True}}, HVPError, "history"),
        ({"method": "trust-ncg", "options": {"disp": True}}, HVPError, "result.message"),
        ({"method": "trust-ncg", "options": {"eta": 0.3}}, HVPError, "0 <= eta < 0.25"),
        ({"method": "trust-ncg", "options": {"initial_trust_radius": 2e3}}, HVPError, "less"),
        ({"method": "newton-cg", "options": {"c1": 0.95}}, HVPError, "0 < c1 < c2 < 1"),
        ({"method": "newton-cg", "options": {"maxiter": "3"}}, TypeError, "must be a number"),
        ({"method": "newton-cg", "options": {"maxiter": float("nan")}}, HVPError, "got nan"),
        ({"method": "newton-cg", "options": {"cg_maxiter": 0}}, HVPError, "at least 1"),
        ({"method": "newton-cg", "options": {"xtol": -1.0}}, HVPError, "non-negative"),
        ({"method": "newton-cg", "callback": 3}, TypeError, "callback must be callable"),
        ({"method": "newton-cg", "hessp": 3}, TypeError, "hessp must be callable"),
        ({"method": "newton-cg", "jac": "2-point"}, TypeError, "jac must be None, a bool"),
        ({"method": "newton-cg", "options": [("maxiter", 3)]}, TypeError, "must be a dict"),
        ({"method": "newton-cg", "args": 1.0}, TypeError, r"args=\(arg,\)"),
    ],
)
def test_invalid_calls(kwargs, error, match):
    kwargs = dict(kwargs)
    args = kwargs.pop("args", ())
    with pytest.raises(error, match=match):
        jaxhvp.minimize(beale, jnp.ones(2), args, **kwargs)


def test_invalid_functions_and_points():
    with pytest.raises(TypeError, match="fun must be callable"):
        jaxhvp.minimize("beale", jnp.ones(2), method="trust-ncg")
    with pytest.raises(HVPError, match="real floating"):
        jaxhvp.minimize(beale, jnp.ones(2, jnp.int32), method="trust-ncg")
    with pytest.raises(HVPError, match="at least one array"):
        jaxhvp.minimize(beale, {}, method="trust-ncg")
    with pytest.raises(HVPError, match=r"single value.*\.sum\(\)"):
        jaxhvp.minimize(lambda x: x**2, jnp.ones(2), method="trust-ncg")
    with pytest.raises(HVPError, match="floating value"):
        jaxhvp.minimize(lambda x: jnp.sum(x > 0), jnp.ones(2), method="newton-cg")


# --- the training-step API --------------------------------------------------------------------


def batch_loss(params, features, labels):
    logits = features @ params["w"] + params["b"]
    return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits) + 5e-3 * params["w"] @ params["w"]


whole_batch_loss = jax.jit(batch_loss)  # the loss on all the data: one compilation


def flat_batch_loss(wb, features, labels):
    """batch_loss over ``concatenate([w, [b]])``, for scipy."""
    return batch_loss({"w": wb[:-1], "b": wb[-1]}, features, labels)


@functools.cache
def _best_batch_loss():
    """The least loss on all the data (strongly convex: one minimiser), found by scipy's
    trust-ncg: an independent reference, and three small compilations instead of a solver's."""
    features, labels = logistic_data(m=256, d=10, seed=1)
    args = (jnp.asarray(features), jnp.asarray(labels))
    best = scipy_minimize(flat_batch_loss, np.zeros(11), "trust-ncg", args=args)
    assert best.success, best.message
    return float(best.fun)


@pytest.mark.parametrize(
    ("init", "step"),
    [
        (jaxhvp.newton_cg_init, jaxhvp.newton_cg_step),
        (jaxhvp.trust_ncg_init, jaxhvp.trust_ncg_step),
    ],
)
def test_step_in_a_jitted_training_loop(init, step):
    # numpy data: slicing out the mini-batches compiles nothing.
    features, labels = logistic_data(m=256, d=10, seed=1)
    params = {"w": jnp.zeros(10), "b": jnp.zeros(())}
    state = init(params)

    @jax.jit
    def train_step(params, state, batch):
        return step(batch_loss, params, state, *batch)

    start = whole_batch_loss(params, features, labels)
    for _epoch in range(3):
        for i in range(4):  # mini-batches of 64
            batch = (features[64 * i : 64 * (i + 1)], labels[64 * i : 64 * (i + 1)])
            params, state, info = train_step(params, state, batch)
            assert info.fun.shape == () and info.nhev.dtype == jnp.int32
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure({"w": 0, "b": 0})
    best = _best_batch_loss()
    final = whole_batch_loss(params, features, labels)
    assert final < start
    assert final - best < 0.05 * (start - best)  # most of the way on 12 mini-batch steps


def test_trust_ncg_steps_are_scipys_iterations():
    # The same step, made k times on the whole problem, is scipy's trust-ncg with maxiter=k.
    fun, x0 = PROBLEMS["helical-valley"]
    x = jnp.asarray(x0)
    state = jaxhvp.trust_ncg_init(x)
    step = jax.jit(lambda x, s: jaxhvp.trust_ncg_step(fun, x, s))
    for k in range(1, 9):
        x, state, _ = step(x, state)
        theirs = scipy_minimize(fun, x0, "trust-ncg", options={"maxiter": k})
        np.testing.assert_allclose(x, theirs.x, rtol=1e-10, atol=1e-12)


def test_newton_cg_step_on_a_quadratic():
    # One step on a convex quadratic with enough CG iterations is the damped Newton step.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 6))
    hessian = a @ a.T + 6 * np.eye(6)
    b = rng.standard_normal(6)

    def fun(x):
        return 0.5 * x @ (jnp.asarray(hessian) @ x) - jnp.asarray(b) @ x

    x0 = jnp.zeros(6)
    state = jaxhvp.newton_cg_init(x0, damping=1e-6)
    x, state, info = jaxhvp.newton_cg_step(fun, x0, state, cg_maxiter=50)
    # scipy's forcing term stops CG at a relative 1-norm residual of min(0.5, sqrt|g|_1).
    exact = np.linalg.solve(hessian, b)
    assert bool(info.accepted) and float(info.ratio) == pytest.approx(1.0)
    assert np.abs(hessian @ np.asarray(x) - b).sum() <= 0.5 * np.abs(b).sum()
    assert float(fun(x)) < float(fun(x0)) and float(fun(exact)) <= float(fun(x))
    assert float(state.damping) == pytest.approx(1e-6 / 1.5)  # ratio > 3/4: less damping


def test_step_init_errors():
    with pytest.raises(HVPError, match="damping must be a positive number"):
        jaxhvp.newton_cg_init(jnp.zeros(2), damping=-1.0)
    with pytest.raises(HVPError, match="radius must be a positive number"):
        jaxhvp.trust_ncg_init(jnp.zeros(2), radius=0.0)
    with pytest.raises(HVPError, match="real floating"):
        jaxhvp.trust_ncg_init(jnp.zeros(2, jnp.int32))
