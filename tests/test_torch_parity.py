"""Every bad call of hvp, vhp and hessian fails as torch.autograd.functional fails.

Each case is one call written once for both frameworks: a function of an array namespace
(``Torch`` or ``Jax``) builds ``(func, args, kwargs)``. The call runs through torch on float64
tensors and through jaxhvp on float64 jax arrays. jaxhvp must raise an instance of torch's
exception class whose message starts with torch's (jaxhvp may append how to fix the call).
Cases with two faults check that they are reported in torch's order.
"""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax import lax
from torch.autograd import functional as torch_functional

import jaxhvp
from jaxhvp import HVPError


class Torch:
    functional = torch_functional

    @staticmethod
    def array(shape=(3,), dtype="float64"):
        return torch.full(shape, 0.5, dtype=torch.float64).to(getattr(torch, dtype))

    @staticmethod
    def detach(x):
        return x.detach()


class Jax:
    functional = jaxhvp

    @staticmethod
    def array(shape=(3,), dtype="float64"):
        return jnp.full(shape, 0.5, dtype=jnp.float64).astype(dtype)

    detach = staticmethod(lax.stop_gradient)


def in_jax_terms(message):
    """torch's message with its values printed as jaxhvp prints them: torch.Size, torch dtypes."""
    message = re.sub(
        r"torch\.Size\(\[([\d, ]*)\]\)",
        lambda m: str(tuple(int(d) for d in m.group(1).split(",") if d.strip())),
        message,
    )
    return re.sub(r"\btorch\.(bool|u?int\d+|float\d+|bfloat16)\b", r"\1", message)


def test_in_jax_terms():
    assert in_jax_terms("should be torch.Size([4]) but got torch.Size([])") == (
        "should be (4,) but got ()"
    )
    assert in_jax_terms("torch.Size([2, 3]), torch.int32, torch.bool") == "(2, 3), int32, bool"
    jacobian = "torch.autograd.functional.jacobian: `strict=True`"
    assert in_jax_terms(jacobian) == jacobian


# Functions written once for both frameworks. Products of x with itself, not powers: torch's
# derivative of x**2 keeps an x**0 term in its graph, which strict mode sees (docs/strict.md).
def cube(x):
    return (x * x * x).sum()


def square(x):
    return (x * x).sum()


def cube_pair(x, y):
    return cube(x) + (x * y).sum()


PRODUCT_CASES = {
    # inputs: types first, then dtypes (torch's _as_tuple, then requires_grad_)
    "inputs a float": lambda xp: (cube, (1.0, None), {}),
    "inputs None": lambda xp: (cube, (None, None), {}),
    "inputs a tuple with a float": lambda xp: (cube_pair, ((xp.array(), 2.0), None), {}),
    "inputs a tuple with None": lambda xp: (cube_pair, ((xp.array(), None), None), {}),
    "inputs a tuple, a float before None": lambda xp: (cube_pair, ((1.0, None), None), {}),
    "inputs integer": lambda xp: (cube, (xp.array(dtype="int32"), xp.array()), {}),
    "inputs bool": lambda xp: (cube, (xp.array(dtype="bool"), None), {}),
    "inputs a tuple with an integer entry": lambda xp: (
        cube_pair,
        ((xp.array(), xp.array(dtype="int64")), None),
        {},
    ),
    "inputs a float and v a float": lambda xp: (cube, (1.0, 1.0), {}),
    "inputs integer and v a float": lambda xp: (cube, (xp.array(dtype="int32"), 1.0), {}),
    # v for a single array: the type of every entry, then the count, then sizes
    "v a float": lambda xp: (cube, (xp.array(), 1.0), {}),
    "v a list": lambda xp: (cube, (xp.array(), [xp.array()]), {}),
    "v a dict": lambda xp: (cube, (xp.array(), {"a": xp.array()}), {}),
    "v (v, 2)": lambda xp: (cube, (xp.array(), (xp.array(), 2)), {}),
    "v (v, None)": lambda xp: (cube, (xp.array(), (xp.array(), None)), {}),
    "v (2,)": lambda xp: (cube, (xp.array(), (2,)), {}),
    "v a nested tuple": lambda xp: (cube, (xp.array(), ((xp.array(),),)), {}),
    "v ()": lambda xp: (cube, (xp.array(), ()), {}),
    "v (v, v)": lambda xp: (cube, (xp.array(), (xp.array(), xp.array())), {}),
    "v wrong size": lambda xp: (cube, (xp.array((4,)), xp.array((5,))), {}),
    "v wrong shape, same size": lambda xp: (cube, (xp.array((2, 3)), xp.array((3, 2))), {}),
    "v not broadcast": lambda xp: (cube, (xp.array((2, 3)), xp.array((3,))), {}),
    "v 0-d for a one-element input": lambda xp: (cube, (xp.array((1,)), xp.array(())), {}),
    "v a 1-tuple of the wrong size": lambda xp: (cube, (xp.array((4,)), (xp.array((5,)),)), {}),
    "v None, many elements": lambda xp: (cube, (xp.array(), None), {}),
    "v None, two one-element inputs": lambda xp: (
        cube_pair,
        ((xp.array((1,)), xp.array((1,))), None),
        {},
    ),
    "v None, no inputs": lambda xp: (lambda: xp.array(()), ((), None), {}),
    # v for a tuple of inputs
    "v one array for two inputs": lambda xp: (
        cube_pair,
        ((xp.array(), xp.array()), xp.array()),
        {},
    ),
    "v too short": lambda xp: (cube_pair, ((xp.array(), xp.array()), (xp.array(),)), {}),
    "v too long": lambda xp: (cube_pair, ((xp.array(),) * 2, (xp.array(),) * 3), {}),
    "v a list for two inputs": lambda xp: (cube_pair, ((xp.array(),) * 2, [xp.array()] * 2), {}),
    "v a tuple with a float": lambda xp: (cube_pair, ((xp.array(),) * 2, (xp.array(), 1.0)), {}),
    "v too long, with an int": lambda xp: (
        cube_pair,
        ((xp.array(),) * 2, (xp.array(), 2, xp.array())),
        {},
    ),
    "v entry 1 wrong size": lambda xp: (
        cube_pair,
        ((xp.array(), xp.array()), (xp.array(), xp.array((4,)))),
        {},
    ),
    "v entries 0 and 1 wrong size": lambda xp: (
        cube_pair,
        ((xp.array(), xp.array()), (xp.array((2,)), xp.array((4,)))),
        {},
    ),
    "v entry 0 wrong dtype, entry 1 wrong size": lambda xp: (
        cube_pair,
        ((xp.array(), xp.array()), (xp.array(dtype="float32"), xp.array((4,)))),
        {},
    ),
    "v wrong size and output not scalar": lambda xp: (
        lambda x: x * x,
        (xp.array((4,)), xp.array((5,))),
        {},
    ),
    # the output: its type, then (strict) its dependence, then a single one-element array
    "output not scalar": lambda xp: (lambda x: x * x, (xp.array(), xp.array()), {}),
    "output a tuple": lambda xp: (lambda x: (x.sum(), x.sum()), (xp.array(), xp.array()), {}),
    "output a 1-tuple": lambda xp: (lambda x: (x.sum(),), (xp.array(), xp.array()), {}),
    "output an empty tuple": lambda xp: (lambda x: (), (xp.array(), xp.array()), {}),
    "output a float": lambda xp: (lambda x: 1.0, (xp.array(), xp.array()), {}),
    "output None": lambda xp: (lambda x: None, (xp.array(), xp.array()), {}),
    "output a list": lambda xp: (lambda x: [x.sum()], (xp.array(), xp.array()), {}),
    "output a tuple with a float": lambda xp: (
        lambda x: (x.sum(), 1.0),
        (xp.array(), xp.array()),
        {},
    ),
    # func: torch finds out that it is not callable when it calls it, after inputs and v
    "func an int": lambda xp: (3, (xp.array(), xp.array()), {}),
    "func None": lambda xp: (None, (xp.array(), xp.array()), {}),
    "func a numpy array": lambda xp: (np.ones(2), (xp.array(), xp.array()), {}),
    "func an int, inputs a float": lambda xp: (3, (1.0, xp.array()), {}),
    "func an int, inputs integer": lambda xp: (3, (xp.array(dtype="int32"), None), {}),
    "func an int, v wrong size": lambda xp: (3, (xp.array((4,)), xp.array((5,))), {}),
    "func an int, v None": lambda xp: (3, (xp.array(), None), {}),
    # strict mode, in torch's order: output, gradient, then (create_graph) the product
    "strict, output constant": lambda xp: (
        lambda x: xp.array(()),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output detached": lambda xp: (
        lambda x: xp.detach(x).sum(),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output integer": lambda xp: (
        lambda x: (x > 0).sum(),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output constant and not scalar": lambda xp: (
        lambda x: xp.array(),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output not scalar": lambda xp: (
        lambda x: x * x,
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output a tuple with a constant": lambda xp: (
        lambda x: (x.sum(), xp.array(())),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output a 1-tuple of a constant": lambda xp: (
        lambda x: (xp.array(()),),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output a tuple": lambda xp: (
        lambda x: (x.sum(), cube(x)),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, output a tuple with a float": lambda xp: (
        lambda x: (xp.array(()), 1.0),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, unused input": lambda xp: (
        lambda x, y: cube(x),
        ((xp.array(),) * 2, (xp.array(),) * 2),
        dict(strict=True),
    ),
    "strict, detached input": lambda xp: (
        lambda x, y: cube(x) + xp.detach(y).sum(),
        ((xp.array(),) * 2, (xp.array(),) * 2),
        dict(strict=True),
    ),
    "strict, linear": lambda xp: (
        lambda x: 2 * x.sum(),
        (xp.array(), xp.array()),
        dict(strict=True),
    ),
    "strict, linear in input 1": lambda xp: (
        lambda x, y: cube(x) + y.sum(),
        ((xp.array(),) * 2, (xp.array(),) * 2),
        dict(strict=True),
    ),
    "strict, v wrong size": lambda xp: (
        lambda x: xp.array(()),
        (xp.array((4,)), xp.array((5,))),
        dict(strict=True),
    ),
    "strict, create_graph, quadratic": lambda xp: (
        square,
        (xp.array(), xp.array()),
        dict(strict=True, create_graph=True),
    ),
    "strict, create_graph, quadratic in input 1": lambda xp: (
        lambda x, y: cube(x) + square(y),
        ((xp.array(),) * 2, (xp.array(),) * 2),
        dict(strict=True, create_graph=True),
    ),
    "strict, create_graph, linear": lambda xp: (
        lambda x: 2 * x.sum(),
        (xp.array(), xp.array()),
        dict(strict=True, create_graph=True),
    ),
}

HESSIAN_CASES = {
    "inputs a float": lambda xp: (cube, (1.0,), {}),
    "inputs a tuple with None": lambda xp: (cube_pair, ((xp.array(), None),), {}),
    "inputs integer": lambda xp: (cube, (xp.array(dtype="int32"),), {}),
    "unknown strategy": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="sideways"),
    ),
    "strategy None": lambda xp: (cube, (xp.array(),), dict(outer_jacobian_strategy=None)),
    "unknown strategy, inputs a float": lambda xp: (
        cube,
        (1.0,),
        dict(outer_jacobian_strategy="sideways"),
    ),
    "unknown strategy, inputs integer": lambda xp: (
        cube,
        (xp.array(dtype="int32"),),
        dict(outer_jacobian_strategy="sideways"),
    ),
    "unknown strategy, func an int": lambda xp: (
        3,
        (xp.array(),),
        dict(outer_jacobian_strategy="sideways"),
    ),
    "forward-mode, create_graph": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True, create_graph=True),
    ),
    "forward-mode, create_graph and strict": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", create_graph=True, strict=True),
    ),
    "forward-mode, create_graph, inputs integer": lambda xp: (
        cube,
        (xp.array(dtype="int32"),),
        dict(outer_jacobian_strategy="forward-mode", create_graph=True),
    ),
    "forward-mode, strict": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True, strict=True),
    ),
    "forward-mode, strict, not vectorized": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", strict=True),
    ),
    "forward-mode, not vectorized": lambda xp: (
        cube,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode"),
    ),
    "forward-mode, not vectorized, inputs integer": lambda xp: (
        cube,
        (xp.array(dtype="int32"),),
        dict(outer_jacobian_strategy="forward-mode"),
    ),
    "forward-mode, inputs integer": lambda xp: (
        cube,
        (xp.array(dtype="int32"),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "forward-mode, inputs integer, func an int": lambda xp: (
        3,
        (xp.array(dtype="int32"),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "forward-mode, func an int": lambda xp: (
        3,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "forward-mode, output not scalar": lambda xp: (
        lambda x: x * x,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "forward-mode, output a 1-tuple": lambda xp: (
        lambda x: (x.sum(),),
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "forward-mode, output a float": lambda xp: (
        lambda x: 1.0,
        (xp.array(),),
        dict(outer_jacobian_strategy="forward-mode", vectorize=True),
    ),
    "func an int": lambda xp: (3, (xp.array(),), {}),
    "func a numpy array": lambda xp: (np.ones(2), (xp.array(),), {}),
    "func an int, inputs integer": lambda xp: (3, (xp.array(dtype="int32"),), {}),
    "output not scalar": lambda xp: (lambda x: x * x, (xp.array(),), {}),
    "output a tuple": lambda xp: (lambda x: (x.sum(), x.sum()), (xp.array(),), {}),
    "output a float": lambda xp: (lambda x: 1.0, (xp.array(),), {}),
    "output a tuple with a float": lambda xp: (lambda x: (x.sum(), 1.0), (xp.array(),), {}),
    # strict mode, in torch's order: output, gradient, vectorize, then each block in turn
    "strict, output constant": lambda xp: (
        lambda x: xp.array(()),
        (xp.array(),),
        dict(strict=True),
    ),
    "strict, output a tuple with a constant": lambda xp: (
        lambda x: (x.sum(), xp.array(())),
        (xp.array(),),
        dict(strict=True),
    ),
    "strict, unused input": lambda xp: (
        lambda x, y: cube(x),
        ((xp.array(),) * 2,),
        dict(strict=True),
    ),
    "strict, linear": lambda xp: (lambda x: 2 * x.sum(), (xp.array(),), dict(strict=True)),
    "strict, zero block": lambda xp: (
        lambda x, y: cube(x) + cube(y),
        ((xp.array(),) * 2,),
        dict(strict=True),
    ),
    "strict, vectorize": lambda xp: (cube, (xp.array(),), dict(strict=True, vectorize=True)),
    "strict, vectorize, output not scalar": lambda xp: (
        lambda x: x * x,
        (xp.array(),),
        dict(strict=True, vectorize=True),
    ),
    "strict, vectorize, output constant": lambda xp: (
        lambda x: xp.array(()),
        (xp.array(),),
        dict(strict=True, vectorize=True),
    ),
    "strict, vectorize, linear": lambda xp: (
        lambda x: 2 * x.sum(),
        (xp.array(),),
        dict(strict=True, vectorize=True),
    ),
    "strict, vectorize, zero block": lambda xp: (
        lambda x, y: cube(x) + cube(y),
        ((xp.array(),) * 2,),
        dict(strict=True, vectorize=True),
    ),
    "strict, create_graph, quadratic": lambda xp: (
        square,
        (xp.array(),),
        dict(strict=True, create_graph=True),
    ),
    "strict, create_graph, constant block before a zero block": lambda xp: (
        lambda x, y: square(x) + cube(y),
        ((xp.array(),) * 2,),
        dict(strict=True, create_graph=True),
    ),
    "strict, create_graph, zero block before a constant block": lambda xp: (
        lambda x, y: cube(x) + square(y),
        ((xp.array(),) * 2,),
        dict(strict=True, create_graph=True),
    ),
}


# What torch raises for a bad call; NotImplementedError is a RuntimeError.
TORCH_ERRORS = (RuntimeError, TypeError, AssertionError, ValueError)


def _assert_same_failure(name, build, jit):
    func, args, kwargs = build(Torch)
    with pytest.raises(TORCH_ERRORS) as torch_error:
        getattr(torch_functional, name)(func, *args, **kwargs)
    func, args, kwargs = build(Jax)
    with pytest.raises(type(torch_error.value)) as ours:
        getattr(jaxhvp, name)(func, *args, **kwargs, jit=jit)
    assert isinstance(ours.value, (HVPError, TypeError)), type(ours.value)
    expected = in_jax_terms(str(torch_error.value))
    assert str(ours.value).startswith(expected), (str(ours.value), expected)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "op-by-op"])
@pytest.mark.parametrize("name", ["hvp", "vhp"])
@pytest.mark.parametrize("case", list(PRODUCT_CASES))
def test_product_fails_as_torch(case, name, jit):
    _assert_same_failure(name, PRODUCT_CASES[case], jit)


# torch's forward-mode AD loads its jvp decompositions with torch.jit.script, which warns.
TORCH_JIT_WARNING = "ignore:`torch.jit.script` is deprecated:DeprecationWarning"


@pytest.mark.filterwarnings(TORCH_JIT_WARNING)
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "op-by-op"])
@pytest.mark.parametrize("case", list(HESSIAN_CASES))
def test_hessian_fails_as_torch(case, jit):
    _assert_same_failure("hessian", HESSIAN_CASES[case], jit)


@pytest.mark.filterwarnings(TORCH_JIT_WARNING)
def test_every_torch_exception_class_is_covered():
    # The table reaches each class torch raises, so the class check is not only RuntimeError's.
    seen = set()
    for name, cases in [("hvp", PRODUCT_CASES), ("hessian", HESSIAN_CASES)]:
        for build in cases.values():
            func, args, kwargs = build(Torch)
            try:
                getattr(torch_functional, name)(func, *args, **kwargs)
            except TORCH_ERRORS as error:
                seen.add(type(error))
    assert seen == {RuntimeError, TypeError, AssertionError, NotImplementedError, ValueError}
