"""strict=True: torch's checks, decided from the traced program, also under jax.jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from torch.autograd import functional as torch_functional

import jaxhvp
from jaxhvp import HVPError
from jaxhvp._strict import tangent_dependence

# Each case is written once per framework: (jax func, torch func, number of inputs, create_graph).
# lax.stop_gradient is torch's detach(); an integer cast cuts the path in both.
CASES = {
    "unused input": (
        lambda x, y: (x**3).sum(),
        lambda x, y: (x**3).sum(),
        2,
        False,
    ),
    "stop_gradient input": (
        lambda x, y: (x**3).sum() + lax.stop_gradient(y**3).sum(),
        lambda x, y: (x**3).sum() + (y**3).detach().sum(),
        2,
        False,
    ),
    "integer cast": (
        lambda x, y: (x**3).sum() + y.astype(jnp.int32).sum(),
        lambda x, y: (x**3).sum() + y.to(torch.int32).sum(),
        2,
        False,
    ),
    "linear in an input": (
        lambda x, y: (x**3).sum() + y.sum(),
        lambda x, y: (x**3).sum() + y.sum(),
        2,
        False,
    ),
    "constant output": (
        lambda x: lax.stop_gradient(x).sum(),
        lambda x: x.detach().sum(),
        1,
        False,
    ),
    "constant hessian, create_graph": (
        lambda x: x @ x,
        lambda x: x @ x,
        1,
        True,
    ),
    "cubic, create_graph": (
        lambda x: (x**3).sum(),
        lambda x: (x**3).sum(),
        1,
        True,
    ),
    "bilinear": (
        lambda x, y: x.sum() * y.sum(),
        lambda x, y: x.sum() * y.sum(),
        2,
        False,
    ),
    "coupled cubic": (
        lambda x, y: (x**2 * y).sum() + (y**3).sum(),
        lambda x, y: (x**2 * y).sum() + (y**3).sum(),
        2,
        False,
    ),
}


def _torch_message(name, case):
    _, torch_fn, n, create_graph = CASES[case]
    inputs = tuple(torch.full((3,), 0.5, dtype=torch.float64) for _ in range(n))
    kwargs = dict(strict=True, create_graph=create_graph)
    try:
        if name == "hessian":
            torch_functional.hessian(torch_fn, inputs, **kwargs)
        else:
            getattr(torch_functional, name)(torch_fn, inputs, inputs, **kwargs)
    except RuntimeError as error:
        return str(error)
    return None


def _ours(name, case, jit):
    jax_fn, _, n, create_graph = CASES[case]
    inputs = tuple(jnp.full((3,), 0.5) for _ in range(n))
    kwargs = dict(strict=True, create_graph=create_graph)
    if name == "hessian":
        call = lambda p: jaxhvp.hessian(jax_fn, p, **kwargs)  # noqa: E731
    else:
        call = lambda p: getattr(jaxhvp, name)(jax_fn, p, p, **kwargs)  # noqa: E731
    (jax.jit(call) if jit else call)(inputs)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", ["hvp", "vhp", "hessian"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_matches_torch(name, case, jit):
    expected = _torch_message(name, case)
    if expected is None:
        _ours(name, case, jit)
    else:
        with pytest.raises(HVPError) as error:
            _ours(name, case, jit)
        assert str(error.value) == expected


def test_strict_false_gives_zeros_where_strict_raises():
    x, y = jnp.full(3, 0.5), jnp.ones(2)
    _, (hx, hy) = jaxhvp.hvp(CASES["unused input"][0], (x, y), (x, y))
    np.testing.assert_array_equal(hy, np.zeros(2))
    np.testing.assert_allclose(hx, 6 * x * x)


def test_strict_names_pytree_paths():
    params = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(HVPError, match=r"input 0 \(inputs\['b'\]\)"):
        jaxhvp.hvp(lambda p: (p["w"] ** 3).sum(), params, params, strict=True)


def test_strict_sees_through_nested_jit():
    inner = jax.jit(lambda x, y: (x**3).sum() + lax.stop_gradient(y).sum())
    with pytest.raises(HVPError, match="independent of input 1"):
        jaxhvp.hvp(inner, (jnp.ones(2), jnp.ones(2)), (jnp.ones(2), jnp.ones(2)), strict=True)


def test_strict_is_conservative_inside_loops():
    # Inside a loop every output is assumed to depend on every loop input: no false alarm.
    def f(x, y):
        return lax.fori_loop(0, 3, lambda i, c: c + (x**3).sum() + (y**2).sum(), 0.0)

    x = jnp.ones(2)
    jaxhvp.hvp(f, (x, x), (x, x), strict=True)


def test_tangent_dependence_matrix():
    def f(p):
        x, y, z = p
        return (x**2, x * y, lax.stop_gradient(z) + 1.0)

    deps = tangent_dependence(f, (jnp.ones(2), jnp.ones(2), jnp.ones(2)))
    np.testing.assert_array_equal(
        deps, [[True, False, False], [True, True, False], [False, False, False]]
    )
