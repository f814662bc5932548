"""jaxhvp.optimize beyond scipy parity: callback, jac and hessp, the step APIs over a long
run, counted evaluations, and the package's layout (tests/test_scipy_parity.py holds scipy's
own tests, tests/test_minimize.py the comparisons on standard problems)."""

import ast
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhvp
from jaxhvp import HVPError, MinimizeStatus


def rosen(x):
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


X0 = np.array([-1.2, 1.0, -0.5])  # float64 under the x64 fixture


# --- callback ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_callback_sees_every_iteration_eagerly_and_compiles_once(method):
    # Counted from the counters' values before the calls, not after a cache_clear(), which
    # would make the rest of the file compile these kernels again: each call finds its kernel
    # (a hit) or makes it (a miss, one compilation), and an earlier test may have made them.
    before = jaxhvp.cache_info()
    plain = jaxhvp.minimize(rosen, X0, method=method)
    after_call = []
    for _ in range(2):  # a new callback each call: the same kernel
        seen = []
        result = jaxhvp.minimize(
            rosen,
            X0,
            method=method,
            callback=lambda intermediate_result: seen.append(intermediate_result),
        )
        after_call.append(jaxhvp.cache_info())
        assert [int(r.nit) for r in seen] == list(range(1, int(result.nit) + 1))
        np.testing.assert_allclose(seen[-1].x, result.x)
        assert float(seen[-1].fun) == float(result.fun)
        np.testing.assert_allclose(result.x, plain.x)
    info = jaxhvp.cache_info()
    made = info.misses - before.misses
    assert made <= 2  # without callback, and with one
    assert info.compilations - before.compilations == made and info.uncached == before.uncached
    # The second callback found the first one's kernel.
    assert after_call[1].hits == after_call[0].hits + 1
    assert after_call[1].compilations == after_call[0].compilations


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_callback_stops_the_run_under_jit(method):
    seen = []

    def stop_at_three(intermediate_result):  # scipy passes it by this keyword
        seen.append(int(intermediate_result.nit))
        if intermediate_result.nit == 3:
            raise StopIteration

    solve = jax.jit(lambda x0: jaxhvp.minimize(rosen, x0, method=method, callback=stop_at_three))
    result = jax.block_until_ready(solve(X0))
    assert seen == [1, 2, 3]
    assert int(result.status) == MinimizeStatus.CALLBACK_STOPPED == 99
    assert not bool(result.success) and int(result.nit) == 3
    assert result.message == "`callback` raised `StopIteration`."


def test_callback_errors_are_raised_eagerly():
    def broken(intermediate_result):
        raise KeyError("from the callback")

    with pytest.raises(KeyError, match="from the callback"):
        jaxhvp.minimize(rosen, X0, method="newton-cg", callback=broken)
    # The next call runs normally: nothing of the failed one is left behind.
    assert bool(
        jaxhvp.minimize(
            rosen, X0, method="newton-cg", callback=lambda intermediate_result: None
        ).success
    )


def test_callbacks_nest_and_run_in_threads_at_once():
    inner = []

    def outer(intermediate_result):  # a callback that itself minimises with a callback
        jaxhvp.minimize(
            rosen,
            np.array([0.5, 0.5]),
            method="trust-ncg",
            callback=lambda intermediate_result: inner.append(intermediate_result.nit),
        )
        if intermediate_result.nit == 2:
            raise StopIteration

    result = jaxhvp.minimize(rosen, X0, method="newton-cg", callback=outer)
    assert int(result.status) == 99 and int(result.nit) == 2 and len(inner) > 2

    seen = {}

    def solve(k):
        values = seen[k] = []
        with jax.enable_x64(True):  # a thread-local setting: as the test's
            result = jaxhvp.minimize(
                rosen,
                X0 + 0.1 * k,
                method="trust-ncg",
                callback=lambda intermediate_result: values.append(float(intermediate_result.fun)),
            )
        values.append(int(result.nit))

    threads = [threading.Thread(target=solve, args=(k,)) for k in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for k in range(3):
        *values, nit = seen[k]
        assert len(values) == nit  # each call saw its own callback only
        alone = []
        jaxhvp.minimize(
            rosen,
            X0 + 0.1 * k,
            method="trust-ncg",
            callback=lambda intermediate_result: alone.append(float(intermediate_result.fun)),
        )
        assert values == alone


def test_legacy_callback_is_a_clear_error():
    with pytest.raises(TypeError, match=r"legacy form callback\(xk\) is not supported"):
        jaxhvp.minimize(rosen, X0, method="newton-cg", callback=lambda xk: None)


def test_callback_under_vmap_is_a_clear_error():
    solve = jax.vmap(
        lambda x0: jaxhvp.minimize(
            rosen, x0, method="trust-ncg", callback=lambda intermediate_result: None
        )
    )
    with pytest.raises(HVPError, match=r"cannot run under jax\.vmap"):
        solve(jnp.stack([X0, X0 + 0.1]))


# --- jac and hessp ----------------------------------------------------------------------------


@jax.custom_vjp
def once_differentiable(x):
    """Rosenbrock whose gradient rule cannot itself be differentiated forward."""
    return rosen(x)


def _backward(x, ct):  # a gradient whose own derivative is zero (stop_gradient)
    return (jax.lax.stop_gradient(ct * jax.grad(rosen)(x)),)


once_differentiable.defvjp(lambda x: (rosen(x), x), _backward)


def rosen_hessp(x, p):
    return jax.hessian(rosen)(x) @ p


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_hessp_is_used_and_nothing_is_differentiated_twice(method):
    # Differentiating the gradient gives a zero Hessian, or fails (no forward mode through a
    # custom_vjp): only products that never differentiate it reproduce the run.
    ours = jaxhvp.minimize(once_differentiable, X0, method=method, hessp=rosen_hessp)
    reference = jaxhvp.minimize(rosen, X0, method=method)
    np.testing.assert_allclose(ours.x, reference.x, rtol=1e-10)
    assert int(ours.nit) == int(reference.nit) and int(ours.nhev) == int(reference.nhev)


@pytest.mark.parametrize("jac", ["callable", "with value"])
def test_jac_is_used(jac):
    # The objective's own derivative is zero (stop_gradient): only the given gradient moves x.
    def fun(x):
        value = jax.lax.stop_gradient(rosen(x))
        return (value, jax.grad(rosen)(x)) if jac == "with value" else value

    kwargs = {"jac": True} if jac == "with value" else {"jac": jax.grad(rosen)}
    ours = jaxhvp.minimize(fun, X0, method="trust-ncg", **kwargs)
    reference = jaxhvp.minimize(rosen, X0, method="trust-ncg")
    np.testing.assert_allclose(ours.x, reference.x, rtol=1e-8)
    assert int(ours.nit) == int(reference.nit) > 0
    assert int(
        jaxhvp.minimize(fun if jac != "with value" else rosen, X0, method="trust-ncg").nit
    ) in (0, int(reference.nit))


def test_jac_and_hessp_over_a_pytree():
    params = {"a": jnp.array([-1.2]), "b": jnp.array([1.0, -0.5])}

    def fun(p):
        return rosen(jnp.concatenate([p["a"], p["b"]]))

    def hessp(p, v):
        return jax.jvp(jax.grad(fun), (p,), (v,))[1]

    ours = jaxhvp.minimize(fun, params, method="newton-cg", jac=jax.grad(fun), hessp=hessp)
    flat = jaxhvp.minimize(rosen, X0, method="newton-cg")
    np.testing.assert_allclose(jnp.concatenate([ours.x["a"], ours.x["b"]]), flat.x, rtol=1e-10)
    with pytest.raises(HVPError, match="jac must return a pytree with the structure of x0") as e:
        jaxhvp.minimize(fun, params, method="newton-cg", jac=lambda p: p["b"])
    assert "x0 is a dict but jac(...) is an array" in str(e.value)
    assert "PyTreeDef" not in str(e.value)


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_jac_and_hessp_under_vmap(method):
    starts = jnp.stack([jnp.asarray(X0), jnp.asarray(X0) + 0.3])
    solve = jax.vmap(
        lambda x0: jaxhvp.minimize(rosen, x0, method=method, jac=jax.grad(rosen), hessp=rosen_hessp)
    )
    batched = solve(starts)
    for k, x0 in enumerate(starts):
        alone = jaxhvp.minimize(rosen, x0, method=method)
        np.testing.assert_allclose(batched.x[k], alone.x, rtol=1e-8)
        assert int(batched.nit[k]) == int(alone.nit)


def test_bad_jac_and_hessp_results_are_clear_errors():
    x0 = np.zeros((2, 3))

    def fun(x):
        return jnp.sum((x - 1.0) ** 2)

    with pytest.raises(HVPError, match="jac must return floating arrays"):
        jaxhvp.minimize(fun, x0, method="newton-cg", jac=lambda x: (2 * (x - 1)).astype(int))
    with pytest.raises(HVPError, match=r"shape \(3, 2\) where x0 has \(2, 3\)"):
        jaxhvp.minimize(fun, x0, method="newton-cg", jac=lambda x: (2 * (x - 1)).T)
    with pytest.raises(HVPError, match="hessp must return arrays with the shapes of x0"):
        jaxhvp.minimize(fun, x0, method="trust-ncg", hessp=lambda x, p: p.ravel())
    with pytest.raises(HVPError, match="returned an array of shape"):  # no tracer class
        jaxhvp.minimize(lambda x: x, x0, method="trust-ncg")


def test_custom_vjp_objective_for_newton_cg_is_a_clear_error():
    with pytest.raises(TypeError, match=r"Pass jac=jax.grad\(fun\)"):
        jaxhvp.minimize(once_differentiable, X0, method="newton-cg")
    fixed = jaxhvp.minimize(once_differentiable, X0, method="newton-cg", jac=jax.grad(rosen))
    assert bool(fixed.success)


def test_list_and_empty_x0():
    ours = jaxhvp.minimize(rosen, X0.tolist(), method="newton-cg")  # X0's kernel, from a list
    np.testing.assert_allclose(ours.x, [1.0, 1.0, 1.0], atol=1e-4)
    with pytest.raises(HVPError, match="no elements"):
        jaxhvp.minimize(rosen, jnp.zeros(0), method="newton-cg")
    with pytest.raises(HVPError, match="no leaves"):
        jaxhvp.minimize(rosen, [], method="trust-ncg")


# --- what runs is what is counted --------------------------------------------------------------


@pytest.mark.parametrize("method", ["newton-cg", "trust-ncg"])
def test_the_objective_runs_as_often_as_counted(method):
    runs = []

    def counted(x):
        jax.debug.callback(lambda: runs.append(1))
        return rosen(x)

    result = jax.jit(lambda x0: jaxhvp.minimize(counted, x0, method=method))(X0)
    jax.block_until_ready(result)
    nit, nfev, njev = int(result.nit), int(result.nfev), int(result.njev)
    if method == "trust-ncg":
        # f(x0) and the gradient at x0 share one linearisation, as they share one count in
        # scipy; every other value and gradient counted is one run.
        assert len(runs) == nfev + njev - 1
    else:
        # A trial is one run (value and slope: one nfev and one njev, as scipy counts them);
        # each iteration's linearisation is one more (scipy has that gradient from the
        # trial), f(x0) comes with the first, and the returned jac is one run.
        assert len(runs) == (nfev - 1) + nit + 1


# --- the step APIs keep learning -------------------------------------------------------------


def _regression_batches(seed):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(4)
    for _ in range(100):
        inputs = rng.standard_normal((16, 4))
        yield inputs, inputs @ truth


def _squared_error(w, inputs, targets):
    return jnp.mean((inputs @ w - targets) ** 2)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["newton-cg", "trust-ncg"])
def test_steps_keep_learning_through_converged_batches(kind):
    # 1,000 steps: each batch is repeated until it is solved (the model predicts no decrease)
    # and then a little longer; then a fresh batch from a new target arrives.
    if kind == "newton-cg":
        init = jaxhvp.newton_cg_init
        step = jax.jit(lambda w, s, x, y: jaxhvp.newton_cg_step(_squared_error, w, s, x, y))
        bounded = lambda s: 1e-8 <= float(s.damping) <= 1e8  # noqa: E731
    else:
        init = jaxhvp.trust_ncg_init
        step = jax.jit(lambda w, s, x, y: jaxhvp.trust_ncg_step(_squared_error, w, s, x, y))
        bounded = lambda s: 1e-10 <= float(s.radius) <= 1e3  # noqa: E731
    w = jnp.zeros(4)
    state = init(w)
    steps = converged = 0
    for seed in range(10):
        for inputs, targets in _regression_batches(seed):
            before = float(_squared_error(w, inputs, targets))
            w, state, info = step(w, state, inputs, targets)
            steps += 1
            converged += bool(info.converged)
            assert bounded(state) and np.all(np.isfinite(np.asarray(w)))
            if bool(info.converged):
                assert not bool(info.accepted) and np.isnan(float(info.ratio))
        # The batches of each seed share one truth: a new seed is new data, and after it the
        # loss there is small again, so the step kept learning.
        assert float(_squared_error(w, inputs, targets)) < 1e-6 * max(before, 1.0) + 1e-10
    assert steps == 1000 and converged > 100


def test_a_converged_step_leaves_the_state_alone():
    inputs = jnp.eye(3)
    w = jnp.array([1.0, 2.0, 3.0])
    for init, step in (
        (jaxhvp.newton_cg_init, jaxhvp.newton_cg_step),
        (jaxhvp.trust_ncg_init, jaxhvp.trust_ncg_step),
    ):
        state = init(w)
        new_w, new_state, info = step(_squared_error, w, state, inputs, inputs @ w)
        assert bool(info.converged) and not bool(info.accepted)
        np.testing.assert_array_equal(new_w, w)
        assert jax.tree_util.tree_all(jax.tree_util.tree_map(jnp.array_equal, new_state, state))


def test_step_settings_are_checked():
    newton, trust = jaxhvp.newton_cg_init(X0), jaxhvp.trust_ncg_init(X0)
    with pytest.raises(HVPError, match="min_damping"):
        jaxhvp.newton_cg_step(rosen, X0, newton, min_damping=0.0)
    with pytest.raises(HVPError, match="less than max_radius"):
        jaxhvp.trust_ncg_step(rosen, X0, trust, min_radius=2e3)
    with pytest.raises(HVPError, match="cg_maxiter must be at least 1"):
        jaxhvp.newton_cg_step(rosen, X0, newton, cg_maxiter=0)
    with pytest.raises(HVPError, match="0 <= eta < 1"):
        jaxhvp.trust_ncg_step(rosen, X0, trust, eta=float("nan"))
    with pytest.raises(TypeError, match="state must be a NewtonCGState"):
        jaxhvp.newton_cg_step(rosen, X0, trust)
    with pytest.raises(TypeError, match="traced value"):
        jax.jit(lambda d: jaxhvp.newton_cg_step(rosen, X0, newton, min_damping=d))(1e-3)
    # Concrete scalar arrays are numbers.
    jaxhvp.newton_cg_step(
        rosen, X0, jaxhvp.newton_cg_init(X0, jnp.asarray(0.5)), max_damping=np.float32(1e3)
    )


# --- layout -----------------------------------------------------------------------------------


def test_the_optimize_package_has_no_import_cycles():
    package = pathlib.Path(jaxhvp.optimize.__file__).parent
    graph = {}
    for path in package.glob("*.py"):
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imports.add(node.module)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None:
                imports.update(alias.name for alias in node.names)
        graph[path.stem] = imports & {p.stem for p in package.glob("*.py")}
    state = {}

    def visit(name, trail):
        assert state.get(name) != "open", f"import cycle: {' -> '.join([*trail, name])}"
        if state.get(name) is None:
            state[name] = "open"
            for dependency in graph[name]:
                visit(dependency, [*trail, name])
            state[name] = "done"

    for name in graph:
        visit(name, [])
    assert "_loop" in graph["_newton_cg"] and "_minimize" not in graph["_newton_cg"]


def test_public_names_stay_importable_from_jaxhvp():
    for name in jaxhvp.optimize.__all__:
        assert getattr(jaxhvp, name) is getattr(jaxhvp.optimize, name)
        assert getattr(jaxhvp, name).__module__ == "jaxhvp.optimize"
