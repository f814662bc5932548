"""Bad calls are rejected as torch rejects them, with torch's wording and a fix."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.autograd import functional as torch_functional

import jaxhvp
from jaxhvp import HVPError

FUNCTIONS = ["hvp", "vhp"]


def cube(x):
    return (x**3).sum()


def cube_pair(x, y):
    return (x**3).sum() + (x * y).sum()


def _call(name, *args, **kwargs):
    return getattr(jaxhvp, name)(*args, **kwargs)


def test_error_class_is_value_and_runtime_error():
    assert issubclass(HVPError, ValueError)
    assert issubclass(HVPError, RuntimeError)


# --- the same bad call, in torch and in jaxhvp ------------------------------------------------
# Each case: (func, inputs, v) built by a function of the array module, so both frameworks get
# the same call. torch's message must appear verbatim at the start of ours.


def _ones(xp, *shape):
    return jnp.ones(shape) if xp is jnp else torch.ones(shape, dtype=torch.float64)


SAME_CALL_CASES = {
    "v tuple too short": lambda xp: (cube_pair, (_ones(xp, 2), _ones(xp, 2)), (_ones(xp, 2),)),
    "v tuple too long": lambda xp: (cube, _ones(xp, 2), (_ones(xp, 2), _ones(xp, 2))),
    "v None, many elements": lambda xp: (cube, _ones(xp, 2), None),
    "v None, two inputs": lambda xp: (cube_pair, (_ones(xp, 1), _ones(xp, 1)), None),
    "output not scalar": lambda xp: (lambda x: x**2, _ones(xp, 3), _ones(xp, 3)),
    "output a tuple": lambda xp: (lambda x: (x.sum(), x.sum()), _ones(xp, 3), _ones(xp, 3)),
    "output a float": lambda xp: (lambda x: 1.0, _ones(xp, 3), _ones(xp, 3)),
    "output tuple with float": lambda xp: (lambda x: (x.sum(), 1.0), _ones(xp, 3), _ones(xp, 3)),
    "inputs a float": lambda xp: (cube, 1.0, None),
    "inputs tuple with float": lambda xp: (cube_pair, (_ones(xp, 2), 2.0), None),
    "inputs None": lambda xp: (cube, None, None),
    "inputs tuple with None": lambda xp: (cube_pair, (_ones(xp, 2), None), None),
    "v a float": lambda xp: (cube, _ones(xp, 2), 1.0),
    "v tuple with float": lambda xp: (cube_pair, (_ones(xp, 2), _ones(xp, 2)), (_ones(xp, 2), 1.0)),
}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("case", sorted(SAME_CALL_CASES))
def test_same_rejection_as_torch(name, case):
    with pytest.raises((TypeError, RuntimeError)) as torch_error:
        getattr(torch_functional, name)(*SAME_CALL_CASES[case](torch))
    expected_type = TypeError if torch_error.type is TypeError else HVPError
    with pytest.raises(expected_type) as ours:
        _call(name, *SAME_CALL_CASES[case](jnp))
    assert str(ours.value).startswith(str(torch_error.value)), (str(ours.value), case)


# --- messages whose values print differently in torch (torch.Size) ----------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_wrong_size(name):
    with pytest.raises(
        HVPError, match=re.escape("v has invalid size: should be (4,) but got (5,).")
    ):
        _call(name, cube, jnp.ones(4), jnp.ones(5))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_wrong_size_in_tuple_names_entry(name):
    message = "Entry 1 in v has invalid size: should be (2,) but got (3,)."
    with pytest.raises(HVPError, match=re.escape(message)):
        _call(name, cube_pair, (jnp.ones(2), jnp.ones(2)), (jnp.ones(2), jnp.ones(3)))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_wrong_size_in_pytree_names_path(name):
    inputs = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    v = {"w": jnp.ones((3, 2)), "b": jnp.ones(3)}
    message = "Entry ['w'] in v has invalid size: should be (2, 3) but got (3, 2)."
    with pytest.raises(HVPError, match=re.escape(message)):
        _call(name, lambda p: (p["w"] ** 2).sum() + p["b"].sum(), inputs, v)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_is_not_broadcast(name):
    with pytest.raises(HVPError, match=re.escape("should be (2, 3) but got (3,)")):
        _call(name, cube, jnp.ones((2, 3)), jnp.ones(3))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_output_with_many_elements_says_how_to_fix(name):
    message = f"The Tensor returned by the function given to {name} should contain a single element"
    with pytest.raises(HVPError, match=message) as error:
        _call(name, lambda x: x**2, jnp.ones(3), jnp.ones(3))
    assert "shape (3,)" in str(error.value)
    assert ".sum()" in str(error.value)


# --- jaxhvp's own checks ----------------------------------------------------------------------


@pytest.mark.parametrize("name", FUNCTIONS)
def test_pytree_structure_mismatch_names_both_structures(name):
    inputs = {"w": jnp.ones(2), "b": jnp.ones(2)}
    v = {"w": jnp.ones(2), "c": jnp.ones(2)}
    with pytest.raises(HVPError, match="same pytree structure") as error:
        _call(name, lambda p: (p["w"] ** 3).sum(), inputs, v)
    assert "'b'" in str(error.value)
    assert "'c'" in str(error.value)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_dtype_must_match_input(name):
    message = re.escape("v has invalid dtype: should be float32 but got float64.")
    with pytest.raises(HVPError, match=message) as error:
        _call(name, cube, jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float64))
    assert "astype" in str(error.value)


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
def test_integer_and_bool_inputs_are_rejected(name, dtype):
    with pytest.raises(HVPError, match="only Tensors of floating point dtype") as error:
        _call(name, cube, jnp.ones(3, dtype), jnp.ones(3))
    assert str(np.dtype(dtype)) in str(error.value)
    assert "astype" in str(error.value)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_inputs_are_rejected(name):
    x = jnp.ones(3, jnp.complex64)
    with pytest.raises(HVPError, match="does not support complex inputs"):
        _call(name, lambda z: jnp.abs(z).sum(), x, x)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_complex_output_is_rejected(name):
    with pytest.raises(HVPError, match="returned a complex value"):
        _call(name, lambda x: (x * 1j).sum(), jnp.ones(3), jnp.ones(3))


@pytest.mark.parametrize("name", [*FUNCTIONS, "hessian"])
def test_func_must_be_callable(name):
    args = (jnp.ones(2),) if name == "hessian" else (jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError, match=f"The func given to {name} must be callable.*int"):
        _call(name, 3, *args)


@pytest.mark.parametrize("name", [*FUNCTIONS, "hessian"])
def test_func_not_callable_says_what_python_says(name):
    args = (jnp.ones(2),) if name == "hessian" else (jnp.ones(2), jnp.ones(2))
    with pytest.raises(TypeError) as error:
        _call(name, np.ones(2), *args)
    assert str(error.value).startswith("'numpy.ndarray' object is not callable. The func given")


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_entries_may_be_pytrees_where_inputs_entries_are(name):
    # jaxhvp's extension: a tuple of pytrees is func(*inputs); v follows it entry by entry.
    def f(params, x):
        return (params["w"] ** 3).sum() + (x**3).sum()

    inputs = ({"w": jnp.ones(2)}, jnp.ones(3))
    _, (hw, hx) = _call(name, f, inputs, ({"w": jnp.ones(2)}, jnp.ones(3)))
    np.testing.assert_allclose(hw["w"], 6 * np.ones(2))
    np.testing.assert_allclose(hx, 6 * np.ones(3))
    message = "The v given to {} must be either a Tensor or a tuple of Tensors but the value at "
    with pytest.raises(TypeError, match=re.escape(message.format(name) + "[0]['w'] has type")):
        _call(name, f, inputs, ({"w": 1.0}, jnp.ones(3)))
    with pytest.raises(TypeError, match=re.escape(message.format(name) + "index 1 has type")):
        _call(name, f, inputs, ({"w": jnp.ones(2)}, {"x": jnp.ones(3)}))


@pytest.mark.parametrize("name", FUNCTIONS)
def test_v_none_with_no_arrays_reports_v_as_torch_does(name):
    message = "The vector v can only be None if the input"
    with pytest.raises(HVPError, match=message):
        _call(name, lambda p: jnp.ones(()), {}, None)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_inputs_without_arrays_are_rejected(name):
    with pytest.raises(HVPError, match="must contain at least one array"):
        _call(name, lambda p: 0.0, {}, {})


@pytest.mark.parametrize("name", FUNCTIONS)
def test_type_error_explains_what_is_accepted(name):
    with pytest.raises(TypeError, match=re.escape("jnp.asarray")) as error:
        _call(name, cube, {"a": jnp.ones(2), "b": 3.0}, None)
    assert "['b']" in str(error.value)


# --- hessian's option checks, as torch.autograd.functional.hessian ------------------------------

HESSIAN_OPTION_CASES = [
    (dict(outer_jacobian_strategy="sideways"), "Expected strategy to be either"),
    (
        dict(outer_jacobian_strategy="forward-mode", vectorize=True, create_graph=True),
        '`create_graph=True` and `strategy="forward-mode"` are not supported together',
    ),
    (
        dict(outer_jacobian_strategy="forward-mode", vectorize=True, strict=True),
        '`strict=True` and `strategy="forward-mode"` are not supported together',
    ),
    (dict(outer_jacobian_strategy="forward-mode"), "only implemented for `vectorize=True`"),
    (
        dict(strict=True, vectorize=True),
        "`strict=True` and `vectorized=True` are not supported together",
    ),
]


@pytest.mark.parametrize(("options", "message"), HESSIAN_OPTION_CASES)
def test_hessian_rejects_what_torch_rejects(options, message):
    with pytest.raises((AssertionError, RuntimeError)) as torch_error:
        torch_functional.hessian(
            lambda x: (x**3).sum(), torch.ones(2, dtype=torch.float64), **options
        )
    # An HVPError, and also the class torch raises (AssertionError, NotImplementedError).
    with pytest.raises(HVPError, match=re.escape(message)) as error:
        jaxhvp.hessian(cube, jnp.ones(2), **options)
    assert isinstance(error.value, torch_error.type)


def test_hessian_checks_output_like_hvp():
    message = "The Tensor returned by the function given to hessian should contain a single"
    with pytest.raises(HVPError, match=message):
        jaxhvp.hessian(lambda x: x**2, jnp.ones(2))
