"""PyTorch's own tests of hvp, vhp and hessian (test/autograd/test_functional.py), for JAX.

Each test keeps the name of the torch test it ports and checks what that test checks, rewritten
for JAX, and compares the numbers with torch run on the same data. Where torch checks something
JAX has no counterpart for, a comment says so and the test checks the closest JAX meaning:

* ``res.grad_fn is None`` (a detached result): ``jax.grad`` through the result gives zeros;
  ``grad_fn is not None`` (create_graph=True): it gives torch's derivative.
* ``gradcheck`` / ``gradgradcheck``: ``jax.test_util.check_grads`` to second order.
* torch runs each test with plain tensors and with a tensor subclass (``LoggingTensor``); here
  each runs with the two array types jaxhvp accepts, ``jax.Array`` and ``numpy.ndarray``.
"""

import types
import warnings

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import torch
from conftest import assert_trees_close
from jax import lax
from torch.autograd import functional as torch_functional

import jaxhvp
from jaxhvp import HVPError

# The operations the test functions use, once per framework: a function is written once as
# ``build(xp)`` and made for JAX with ``build(JAX)``, for torch with ``build(TORCH)``.
JAX = types.SimpleNamespace(
    exp=jnp.exp,
    cos=jnp.cos,
    sin=jnp.sin,
    ones=lambda: jnp.ones(()),
    detach=lax.stop_gradient,
    through_integers=lambda a: a.astype(jnp.int64).astype(a.dtype),
)
TORCH = types.SimpleNamespace(
    exp=torch.exp,
    cos=torch.cos,
    sin=torch.sin,
    ones=lambda: torch.ones((), dtype=torch.float64),
    detach=lambda a: a.detach(),
    through_integers=lambda a: a.long().to(a.dtype),
)


class Ctors:
    """torch's tensor constructors (``rand``, ``randn``, ``ones``, ``zeros``), float64.

    They make ``jax.Array`` or ``numpy.ndarray`` values from one seeded generator.
    """

    def __init__(self, kind):
        self.kind = kind
        self._rng = np.random.default_rng(0)

    def _make(self, values):
        values = np.asarray(values, dtype=np.float64)
        return jnp.asarray(values) if self.kind == "jax" else values

    def rand(self, *shape):
        return self._make(self._rng.random(_shape(shape)))

    def randn(self, *shape):
        return self._make(self._rng.standard_normal(_shape(shape)))

    def ones(self, *shape):
        return self._make(np.ones(_shape(shape)))

    def zeros(self, *shape):
        return self._make(np.zeros(_shape(shape)))


def _shape(args):
    return tuple(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args


@pytest.fixture(params=["jax", "numpy"])
def ctors(request):
    return Ctors(request.param)


# --- helpers: torch's structure assertions, conversions, and the detached check ---------------


def _is_array(x):
    return isinstance(x, (jax.Array, np.ndarray))


def assert_same_struct(res, base):
    """torch's ``_assert_same_struct``: an array, or a tuple of arrays, with base's shapes."""
    if type(base) is tuple:
        assert type(res) is tuple and len(res) == len(base), (res, base)
        for r, b in zip(res, base):
            assert _is_array(r) and _is_array(b) and r.shape == b.shape, (r, b)
    else:
        assert _is_array(res) and _is_array(base) and res.shape == base.shape, (res, base)


def assert_interleaved_struct(res, base1, base2):
    """torch's ``_assert_interleaved_struct``: ``res[i][j]`` has shape base1[i] + base2[j]."""
    if type(base1) is not tuple and type(base2) is not tuple:
        assert _is_array(res) and res.shape == base1.shape + base2.shape, res
    elif type(base2) is not tuple:
        assert type(res) is tuple and len(res) == len(base1)
        for r, b1 in zip(res, base1):
            assert _is_array(r) and r.shape == b1.shape + base2.shape
    elif type(base1) is not tuple:
        assert type(res) is tuple and len(res) == len(base2)
        for r, b2 in zip(res, base2):
            assert _is_array(r) and r.shape == base1.shape + b2.shape
    else:
        assert type(res) is tuple and len(res) == len(base1)
        for row, b1 in zip(res, base1):
            assert type(row) is tuple and len(row) == len(base2)
            for r, b2 in zip(row, base2):
                assert _is_array(r) and r.shape == b1.shape + b2.shape


def test_assert_same_struct():
    x = jnp.ones(3)
    assert_same_struct((x, np.ones(2)), (np.ones(3), x[:2]))
    for res, base in [
        (x, np.ones(4)),
        (x, (x,)),
        ((x,), x),
        ((x, x), (x,)),
        ((x, 3.0), (x, x)),
        ([x], (x,)),
    ]:
        with pytest.raises(AssertionError):
            assert_same_struct(res, base)


def test_assert_interleaved_struct():
    a, b = jnp.ones(2), jnp.ones(3)
    assert_interleaved_struct(jnp.ones((2, 3)), a, b)
    assert_interleaved_struct((jnp.ones((2, 3)), jnp.ones((3, 3))), (a, b), b)
    assert_interleaved_struct((jnp.ones((2, 2)), jnp.ones((2, 3))), a, (a, b))
    blocks = ((jnp.ones((2, 2)), jnp.ones((2, 3))), (jnp.ones((3, 2)), jnp.ones((3, 3))))
    assert_interleaved_struct(blocks, (a, b), (a, b))
    for res, base1, base2 in [
        (jnp.ones((3, 2)), a, b),
        ((jnp.ones((2, 3)),), (a, b), b),
        ((jnp.ones((2, 2)), jnp.ones((3, 3))), a, (a, b)),
        ((blocks[0], (jnp.ones((3, 2)), jnp.ones((3, 2)))), (a, b), (a, b)),
        (blocks[0], (a, b), (a, b)),
    ]:
        with pytest.raises(AssertionError):
            assert_interleaved_struct(res, base1, base2)


def to_torch(tree, requires_grad=False):
    if type(tree) is tuple:
        return tuple(to_torch(t, requires_grad) for t in tree)
    return torch.tensor(np.asarray(tree), requires_grad=requires_grad)


def from_torch(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach().numpy()
    return tuple(from_torch(t) for t in tree)


def assert_matches_torch(ours, theirs):
    assert_trees_close(ours, from_torch(theirs))


def assert_detached(call, inputs):
    """No ``grad_fn``: the gradient through every result of ``call(inputs)`` is zero."""

    def total(x):
        return sum(jnp.sum(r) for r in jax.tree_util.tree_leaves(call(x)))

    grad = jax.grad(total)(jax.tree_util.tree_map(jnp.asarray, inputs))
    for g in jax.tree_util.tree_leaves(grad):
        np.testing.assert_array_equal(g, np.zeros_like(g))


def test_assert_detached():
    assert_detached(lambda x: (lax.stop_gradient(x**2), 3.0 * jnp.ones(2)), jnp.ones(2))
    with pytest.raises(AssertionError):
        assert_detached(lambda x: (lax.stop_gradient(x**2), x), jnp.ones(2))


def gradgradcheck(func, args):
    """torch's gradcheck and gradgradcheck: reverse-mode derivatives to second order.

    ``func`` runs as given (eager calls of jaxhvp, and op by op under the derivatives), not
    under ``jax.jit``: check_grads differentiates it in several ways, and jitted, each way is a
    whole program to compile, where op by op the operations' own kernels are shared.
    """
    jax.test_util.check_grads(func, args, order=2, modes=["rev"], eps=1e-6)


def test_gradgradcheck():
    gradgradcheck(lambda x, y: jnp.sin(x) * y**3, (jnp.ones(3), jnp.full(3, 0.5)))

    @jax.custom_jvp
    def cube(x):
        return x**3

    # Right first derivative, whose own derivative is wrong: only the second order sees it.
    cube.defjvp(lambda p, t: (p[0] ** 3, 3 * lax.stop_gradient(p[0] ** 2) * t[0]))
    jax.test_util.check_grads(cube, (jnp.full(3, 0.5),), order=1, eps=1e-6)
    with pytest.raises(AssertionError):
        gradgradcheck(cube, (jnp.full(3, 0.5),))


def torch_grad_of_sum(call, inputs):
    """torch's gradient of the sum of every result of ``call`` (made with create_graph=True)."""
    inputs = to_torch(inputs, requires_grad=True)
    results = call(inputs)
    total = sum(r.sum() for r in jax.tree_util.tree_leaves(results, is_leaf=torch.is_tensor))
    grads = torch.autograd.grad(total, inputs if type(inputs) is tuple else (inputs,))
    return grads if type(inputs) is tuple else grads[0]


def jax_grad_of_sum(call, inputs):
    def total(x):
        return sum(jnp.sum(r) for r in jax.tree_util.tree_leaves(call(x)))

    return jax.grad(total)(jax.tree_util.tree_map(jnp.asarray, inputs))


# --- the functions of torch's tests, once for both frameworks ---------------------------------


def exp_first3(xp):
    return lambda a: 3 * xp.exp(a[:3]).sum()


def not_scalar_and_str(xp):
    return lambda a: (3 * a[:3], "bar")


def not_scalar(xp):
    return lambda a: 3 * a[:3]


def two_not_scalars(xp):
    return lambda a: (3 * a[:3], 3 * a[:3])


def bilinear_first3(xp):
    return lambda a, b: (3 * b[:3] * a[:3]).sum()


def exp_pair(xp):
    return lambda a, b: xp.exp(a + 3 * b[:3]).sum()


def exp_sum(xp):
    return lambda x: xp.exp(x).sum()


def plain_sum(xp):
    return lambda x: x.sum()


def cube_sum(xp):
    return lambda x: (x**3).sum()


def cube_of_sum(xp):
    return lambda x, y: ((x + y) ** 3).sum()


def detached_sum(xp):
    return lambda a: xp.detach(a).sum()


def cut_first_of_two(xp):
    # torch's test makes a tensor that requires grad but is cut from the input
    # (a.long().float().requires_grad_()); JAX has no such value, so the input cut by the
    # integer cast is the first of two and the output depends on the second.
    return lambda a, b: (xp.through_integers(a) * b).sum()


def linear(xp):
    return lambda a: (3 * a).sum()


PRODUCTS = ["hvp", "vhp"]


def _torch(name):
    return getattr(torch_functional, name)


def _ours(name):
    return getattr(jaxhvp, name)


# --- hvp and vhp ------------------------------------------------------------------------------


def _err_check(name, ctors):
    inp, v = ctors.rand(4), ctors.rand(4)
    with pytest.raises(TypeError, match=f"The inputs given to {name} must be either a Tensor"):
        _ours(name)(exp_first3(JAX), (inp, 2), v)
    with pytest.raises(
        TypeError, match=f"The outputs of the user-provided function given to {name} must"
    ):
        _ours(name)(not_scalar_and_str(JAX), inp, v)
    message = f"The Tensor returned by the function given to {name} should contain a single element"
    with pytest.raises(HVPError, match=message):
        _ours(name)(not_scalar(JAX), inp, v)
    with pytest.raises(HVPError, match="v has invalid size:"):
        _ours(name)(exp_first3(JAX), inp, ctors.rand(5))
    message = f"The v given to {name} must be either a Tensor or a tuple of Tensors"
    with pytest.raises(TypeError, match=message):
        _ours(name)(exp_first3(JAX), inp, (v, 2))

    res = _ours(name)(exp_first3(JAX), inp, v)
    assert_same_struct(res[1], inp)
    assert_matches_torch(res, _torch(name)(exp_first3(TORCH), to_torch(inp), to_torch(v)))

    inp, v = (ctors.rand(4), ctors.rand(5)), (ctors.rand(4), ctors.rand(5))
    res = _ours(name)(bilinear_first3(JAX), inp, v)
    assert_same_struct(res[1], inp)
    assert_matches_torch(res, _torch(name)(bilinear_first3(TORCH), to_torch(inp), to_torch(v)))


def test_vhp_err_check(ctors):
    _err_check("vhp", ctors)


def test_hvp_err_check(ctors):
    _err_check("hvp", ctors)


def _err_check_strict(name, ctors):
    inp, v = ctors.rand(4), ctors.rand(4)
    with pytest.raises(
        HVPError, match="Output 0 of the user-provided function does not require gradients"
    ):
        _ours(name)(detached_sum(JAX), inp, v, strict=True)
    res = _ours(name)(detached_sum(JAX), inp, v, strict=False)
    assert_same_struct(res[1], inp)
    assert jnp.abs(res[1]).sum() == 0.0

    pair, pair_v = (inp, ctors.rand(4)), (v, ctors.rand(4))
    with pytest.raises(
        HVPError, match="The output of the user-provided function is independent of input 0"
    ):
        _ours(name)(cut_first_of_two(JAX), pair, pair_v, strict=True)
    with pytest.raises(RuntimeError, match="independent of input 0"):  # torch agrees
        _torch(name)(cut_first_of_two(TORCH), to_torch(pair), to_torch(pair_v), strict=True)
    res = _ours(name)(cut_first_of_two(JAX), pair, pair_v, strict=False)
    assert_same_struct(res[1], pair)
    assert sum(jnp.abs(r).sum() for r in res[1]) == 0.0

    with pytest.raises(
        HVPError, match="jacobian of the user-provided function with respect to input 0 is"
    ):
        _ours(name)(linear(JAX), inp, v, strict=True)
    res = _ours(name)(linear(JAX), inp, v, strict=False)
    assert_same_struct(res[1], inp)
    assert jnp.abs(res[1]).sum() == 0.0


def test_vhp_err_check_strict(ctors):
    _err_check_strict("vhp", ctors)


def test_hvp_err_check_strict(ctors):
    _err_check_strict("hvp", ctors)


def _no_grad(name, ctors):
    # torch.no_grad() has no JAX counterpart (JAX has no global grad mode). The closest meaning:
    # inputs the caller does not differentiate (lax.stop_gradient inside an outer jax.grad)
    # still give the product, not zeros; with create_graph=True the result is differentiable.
    inputs, v = ctors.rand(4, 4), ctors.ones(4, 4)
    expected = _torch(name)(exp_sum(TORCH), to_torch(inputs), to_torch(v))
    for create_graph in [False, True]:

        def outer(x, create_graph=create_graph):
            res = _ours(name)(exp_sum(JAX), lax.stop_gradient(x), v, create_graph=create_graph)
            return res[1].sum(), res

        grad, res = jax.grad(outer, has_aux=True)(jnp.asarray(inputs))
        assert_matches_torch(res, expected)
        assert np.abs(res[1]).sum() > 0
        np.testing.assert_array_equal(grad, np.zeros((4, 4)))

    def product(x, create_graph):
        return _ours(name)(exp_sum(JAX), x, v, create_graph=create_graph)

    assert_detached(lambda x: product(x, False), inputs)
    assert_matches_torch(
        jax_grad_of_sum(lambda x: product(x, True)[1], inputs),
        torch_grad_of_sum(
            lambda x: _torch(name)(exp_sum(TORCH), x, to_torch(v), create_graph=True)[1],
            inputs,
        ),
    )


def test_vhp_no_grad(ctors):
    _no_grad("vhp", ctors)


def test_hvp_no_grad(ctors):
    _no_grad("hvp", ctors)


def _output(name, ctors):
    # grad_fn is None on both results: here, the gradient through them is zero.
    inputs, v = ctors.rand(4, 4), ctors.ones(4, 4)
    res = _ours(name)(exp_first3(JAX), inputs, v)
    assert_same_struct(res[1], inputs)
    assert_matches_torch(res, _torch(name)(exp_first3(TORCH), to_torch(inputs), to_torch(v)))
    assert_detached(lambda x: _ours(name)(exp_first3(JAX), x, v), inputs)

    inputs, v = (ctors.rand(3), ctors.rand(4)), (ctors.ones(3), ctors.ones(4))
    out, val = _ours(name)(exp_pair(JAX), inputs, v)
    assert_same_struct(val, inputs)
    assert_matches_torch((out, val), _torch(name)(exp_pair(TORCH), to_torch(inputs), to_torch(v)))
    assert_detached(lambda x: _ours(name)(exp_pair(JAX), x, v), inputs)


def test_vhp_output(ctors):
    _output("vhp", ctors)


def test_hvp_output(ctors):
    _output("hvp", ctors)


def _scalar(name, ctors, reducer):
    def both(inputs, v=None, func=reducer):
        ours = _ours(name)(func(JAX), inputs, v)
        theirs = _torch(name)(func(TORCH), to_torch(inputs), None if v is None else to_torch(v))
        assert_matches_torch(ours, theirs)
        return ours

    inputs = ctors.rand(4, 4)
    assert_same_struct(both(inputs, ctors.ones(4, 4))[1], inputs)

    inputs = ctors.rand([])
    assert_same_struct(both(inputs, ctors.rand([]))[1], inputs)
    assert_same_struct(both(inputs)[1], inputs)

    def bad_reducer(xp):
        return lambda x: reducer(xp)(x).reshape(1, 1, 1)

    inputs = ctors.rand(4, 4)
    res = both(inputs, ctors.rand(4, 4), func=bad_reducer)
    assert_same_struct(res[1], inputs)
    assert res[0].shape == (1, 1, 1)


def test_vhp_scalar(ctors):
    _scalar("vhp", ctors, plain_sum)


def test_hvp_scalar(ctors):
    _scalar("hvp", ctors, exp_sum)


def _create_graph(name, ctors):
    # gradcheck and gradgradcheck: check_grads to second order, and torch's derivatives.
    inputs, v = ctors.rand(4, 4), ctors.ones(4, 4)
    res = _ours(name)(exp_first3(JAX), inputs, v, create_graph=True)
    assert_same_struct(res[1], inputs)

    def product(x, v):
        return _ours(name)(exp_first3(JAX), x, v, create_graph=True)

    if ctors.kind == "jax":  # finite differences take jax arrays either way: checked once
        gradgradcheck(product, (jnp.asarray(inputs), jnp.asarray(v)))
    assert_matches_torch(
        jax_grad_of_sum(lambda args: product(*args), (inputs, v)),
        torch_grad_of_sum(
            lambda args: _torch(name)(exp_first3(TORCH), *args, create_graph=True), (inputs, v)
        ),
    )

    inputs, v = (ctors.rand(3), ctors.rand(4)), (ctors.ones(3), ctors.ones(4))
    _, val = _ours(name)(exp_pair(JAX), inputs, v, create_graph=True)
    assert_same_struct(val, inputs)

    def pair_product(*args):
        return _ours(name)(exp_pair(JAX), args[:2], args[2:], create_graph=True)[1]

    args = tuple(jnp.asarray(a) for a in inputs + v)
    if ctors.kind == "jax":
        gradgradcheck(pair_product, args)

    def foo(xp, product):
        def f(*args):
            x, y = args[:2]
            v = args[2:]
            x = xp.cos(x)
            val, grad = product(exp_pair(xp), (x, y), v, create_graph=True)
            return (
                xp.cos(val) + xp.cos(grad[0]).sum() + xp.cos(grad[1]) + xp.cos(x).sum() + xp.cos(y)
            )

        return f

    if ctors.kind == "jax":
        gradgradcheck(foo(JAX, _ours(name)), args)
    ours = jax.jacrev(foo(JAX, _ours(name)), argnums=tuple(range(4)))(*args)
    theirs = torch_functional.jacobian(foo(TORCH, _torch(name)), to_torch(inputs + v))
    assert_matches_torch(ours, theirs)


def test_vhp_create_graph(ctors):
    _create_graph("vhp", ctors)


def test_hvp_create_graph(ctors):
    _create_graph("hvp", ctors)


# --- hessian ----------------------------------------------------------------------------------


def _hessian_both(func, inputs, **options):
    ours = jaxhvp.hessian(func(JAX), inputs, **options)
    theirs = torch_functional.hessian(func(TORCH), to_torch(inputs), **options)
    assert_matches_torch(ours, theirs)
    return ours


def test_hessian_vectorize_raises_no_warnings(ctors):
    x = ctors.randn(3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jaxhvp.hessian(lambda a: (a**2).sum(), x, vectorize=True)
    assert caught == []


def _check_hessian_vectorize_correctness(func, inputs):
    expected = _hessian_both(func, inputs, vectorize=False)
    assert_trees_close(jaxhvp.hessian(func(JAX), inputs, vectorize=True), expected)
    forward = jaxhvp.hessian(
        func(JAX), inputs, outer_jacobian_strategy="forward-mode", vectorize=True
    )
    assert_trees_close(forward, expected)


def test_hessian_vectorize_correctness_simple(ctors):
    _check_hessian_vectorize_correctness(
        lambda xp: lambda x: (3 * x**2).sum(), ctors.randn(2, 3, 5)
    )


def test_hessian_vectorize_correctness_multi_input(ctors):
    def f(xp):
        return lambda x, y, z: ((x * (x > 0) * x) @ xp.sin(y) @ z).sum()

    inputs = (ctors.randn(2, 3), ctors.randn(3, 5), ctors.randn(5, 5))
    _check_hessian_vectorize_correctness(f, inputs)


def test_hessian_vectorize_correctness_unrelated_outputs(ctors):
    inputs = (ctors.randn(2), ctors.randn(3))
    # output unrelated to one input
    _check_hessian_vectorize_correctness(lambda xp: lambda x, y: (x**2).sum(), inputs)
    # output unrelated to all inputs
    _check_hessian_vectorize_correctness(lambda xp: lambda x, y: xp.ones(), inputs)


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_err_check(vectorize, ctors):
    inp = ctors.rand(4)
    with pytest.raises(TypeError, match="The inputs given to hessian must be either a Tensor"):
        jaxhvp.hessian(exp_first3(JAX), (inp, 2), vectorize=vectorize)
    with pytest.raises(
        TypeError, match="The outputs of the user-provided function given to hessian must"
    ):
        jaxhvp.hessian(not_scalar_and_str(JAX), inp, vectorize=vectorize)
    message = "The Tensor returned by the function given to hessian should contain a single element"
    with pytest.raises(HVPError, match=message):
        jaxhvp.hessian(not_scalar(JAX), inp, vectorize=vectorize)
    with pytest.raises(
        HVPError, match="The function given to hessian should return a single Tensor"
    ):
        jaxhvp.hessian(two_not_scalars(JAX), inp, vectorize=vectorize)

    res = _hessian_both(exp_first3, inp, vectorize=vectorize)
    assert_interleaved_struct(res, inp, inp)

    inp = (ctors.rand(4), ctors.rand(5))
    res = _hessian_both(bilinear_first3, inp, vectorize=vectorize)
    assert_interleaved_struct(res, inp, inp)


def test_hessian_err_check_strict(ctors):
    inp = ctors.rand(4)
    with pytest.raises(
        HVPError, match="Output 0 of the user-provided function does not require gradients"
    ):
        jaxhvp.hessian(detached_sum(JAX), inp, strict=True)
    res = _hessian_both(detached_sum, inp, strict=False)
    assert_interleaved_struct(res, inp, inp)
    assert jnp.abs(res).sum() == 0.0

    pair = (inp, ctors.rand(4))
    message = "jacobian of the user-provided function with respect to input 0"
    with pytest.raises(HVPError, match=message):
        jaxhvp.hessian(cut_first_of_two(JAX), pair, strict=True)
    with pytest.raises(RuntimeError, match=message):  # torch agrees
        torch_functional.hessian(cut_first_of_two(TORCH), to_torch(pair), strict=True)
    res = _hessian_both(cut_first_of_two, pair, strict=False)
    assert_interleaved_struct(res, pair, pair)
    assert sum(jnp.abs(b).sum() for row in res for b in row) == 0.0

    with pytest.raises(
        HVPError, match="jacobian of the user-provided function with respect to input 0 is"
    ):
        jaxhvp.hessian(linear(JAX), inp, strict=True)
    res = _hessian_both(linear, inp, strict=False)
    assert_interleaved_struct(res, inp, inp)
    assert jnp.abs(res).sum() == 0.0


def test_hessian_err_check_strict_vectorize(ctors):
    with pytest.raises(HVPError, match="not supported together"):
        jaxhvp.hessian(cube_sum(JAX), ctors.rand(4), strict=True, vectorize=True)


def test_hessian_no_grad(ctors):
    # torch.no_grad() has no JAX counterpart; as for hvp: inputs the caller does not
    # differentiate still give the Hessian, and create_graph=True makes it differentiable.
    inputs = ctors.rand(2, 2)
    expected = torch_functional.hessian(cube_sum(TORCH), to_torch(inputs))
    for create_graph in [False, True]:

        def outer(x, create_graph=create_graph):
            h = jaxhvp.hessian(cube_sum(JAX), lax.stop_gradient(x), create_graph=create_graph)
            return h.sum(), h

        grad, res = jax.grad(outer, has_aux=True)(jnp.asarray(inputs))
        assert_matches_torch(res, expected)
        assert np.abs(res).sum() > 0
        np.testing.assert_array_equal(grad, np.zeros((2, 2)))

    assert_detached(lambda x: jaxhvp.hessian(cube_sum(JAX), x), inputs)
    assert_matches_torch(
        jax_grad_of_sum(lambda x: jaxhvp.hessian(cube_sum(JAX), x, create_graph=True), inputs),
        torch_grad_of_sum(
            lambda x: torch_functional.hessian(cube_sum(TORCH), x, create_graph=True), inputs
        ),
    )


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_output(vectorize, ctors):
    # grad_fn is None: here, the gradient through the Hessian is zero.
    inputs = ctors.rand(2, 2)
    res = _hessian_both(cube_sum, inputs, vectorize=vectorize)
    assert_interleaved_struct(res, inputs, inputs)
    assert_detached(lambda x: jaxhvp.hessian(cube_sum(JAX), x, vectorize=vectorize), inputs)

    inputs = (ctors.rand(2, 2), ctors.rand(2, 2))
    res = _hessian_both(cube_of_sum, inputs, vectorize=vectorize)
    assert_interleaved_struct(res, inputs, inputs)
    assert_detached(lambda x: jaxhvp.hessian(cube_of_sum(JAX), x, vectorize=vectorize), inputs)


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_scalar(vectorize, ctors):
    inputs = ctors.rand(4, 4)
    assert_interleaved_struct(_hessian_both(plain_sum, inputs, vectorize=vectorize), inputs, inputs)

    inputs = ctors.rand([])
    assert_same_struct(_hessian_both(plain_sum, inputs, vectorize=vectorize), inputs)

    def bad_reducer(xp):
        return lambda x: x.sum().reshape(1, 1, 1)

    inputs = ctors.rand(4, 4)
    res = _hessian_both(bad_reducer, inputs, vectorize=vectorize)
    assert_interleaved_struct(res, inputs, inputs)


@pytest.mark.parametrize("vectorize", [True, False])
def test_hessian_create_graph(vectorize, ctors):
    # gradcheck and gradgradcheck: check_grads to second order, and torch's derivatives.
    inputs = ctors.rand(2, 2)
    res = jaxhvp.hessian(cube_sum(JAX), inputs, create_graph=True, vectorize=vectorize)
    assert_interleaved_struct(res, inputs, inputs)

    def hessian_of(func):
        return lambda *x: jaxhvp.hessian(
            func(JAX), x if len(x) > 1 else x[0], create_graph=True, vectorize=vectorize
        )

    if ctors.kind == "jax":  # finite differences take jax arrays either way: checked once
        gradgradcheck(hessian_of(cube_sum), (jnp.asarray(inputs),))
    assert_matches_torch(
        jax_grad_of_sum(hessian_of(cube_sum), inputs),
        torch_grad_of_sum(
            lambda x: torch_functional.hessian(
                cube_sum(TORCH), x, create_graph=True, vectorize=vectorize
            ),
            inputs,
        ),
    )

    inputs = (ctors.rand(2, 2), ctors.rand(2, 2))
    res = jaxhvp.hessian(cube_of_sum(JAX), inputs, create_graph=True, vectorize=vectorize)
    assert_interleaved_struct(res, inputs, inputs)
    args = tuple(jnp.asarray(x) for x in inputs)
    if ctors.kind == "jax":
        gradgradcheck(hessian_of(cube_of_sum), args)

    def foo(xp, hessian):
        def f(x, y):
            x = xp.cos(x)
            val, hess = hessian(cube_of_sum(xp), (x, y), create_graph=True, vectorize=vectorize)
            res = xp.cos(val[0]).sum() + xp.cos(val[1]).sum() + xp.cos(hess[0]).sum()
            return res + xp.cos(hess[1]).sum() + xp.cos(x).sum() + xp.cos(y).sum()

        return f

    if ctors.kind == "jax":
        gradgradcheck(foo(JAX, jaxhvp.hessian), args)
    ours = jax.grad(foo(JAX, jaxhvp.hessian), argnums=(0, 1))(*args)
    torch_inputs = to_torch(inputs, requires_grad=True)
    theirs = torch.autograd.grad(foo(TORCH, torch_functional.hessian)(*torch_inputs), torch_inputs)
    assert_matches_torch(ours, theirs)


def test_hessian_match_vhp_hvp(ctors):
    inputs, v = ctors.rand(4), ctors.rand(4)
    hes = _hessian_both(exp_first3, inputs)
    hvp = jaxhvp.hvp(exp_first3(JAX), inputs, v)[1]
    vhp = jaxhvp.vhp(exp_first3(JAX), inputs, v)[1]
    assert_trees_close(hvp, hes @ v)
    assert_trees_close(vhp, v @ hes)
