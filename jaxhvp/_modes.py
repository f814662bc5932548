"""The AD compositions behind every Hessian product, one function per mode.

Each composition maps ``(scalar, primals, vector)`` to ``(product, (grad, bundle))``: the
product is linear in ``vector`` and the rest depends on ``primals`` only, so the same function
serves a one-off product and ``jax.linearize`` over ``vector`` (the Hessian operator).
``scalar`` maps primals to ``(value, bundle)``, as ``scalar_fn`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from ._errors import HVPError
from ._inputs import Inputs, check_output_types, check_single_output


def fwd_rev(scalar: Callable, primals: Any, vector: Any) -> tuple[Any, Any]:
    """Forward-over-reverse, ``jax.jvp`` of ``jax.grad``: ``H v``."""
    grad, hv, bundle = jax.jvp(jax.grad(scalar, has_aux=True), (primals,), (vector,), has_aux=True)
    return hv, (grad, bundle)


def rev_rev(scalar: Callable, primals: Any, vector: Any) -> tuple[Any, Any]:
    """Reverse-over-reverse, ``jax.vjp`` of ``jax.grad``: ``v^T H``."""
    grad, pullback, bundle = jax.vjp(jax.grad(scalar, has_aux=True), primals, has_aux=True)
    (vh,) = pullback(vector)
    return vh, (grad, bundle)


def rev_fwd(scalar: Callable, primals: Any, vector: Any) -> tuple[Any, Any]:
    """Reverse-over-forward, ``jax.grad`` of ``jax.jvp``: the gradient of ``<grad f, v>``."""

    def directional(p: Any) -> tuple[jax.Array, Any]:
        _, derivative, bundle = jax.jvp(scalar, (p,), (vector,), has_aux=True)
        return derivative, bundle

    hv, bundle = jax.grad(directional, has_aux=True)(primals)
    grad = jax.grad(scalar, has_aux=True)(primals)[0]  # dropped by jit when unused
    return hv, (grad, bundle)


MODES: dict[str, Callable] = {"fwd-rev": fwd_rev, "rev-rev": rev_rev, "rev-fwd": rev_fwd}
MODE_NAMES: dict[Callable, str] = {compose: name for name, compose in MODES.items()}
AUTO = "auto"


def resolve_mode(mode: Any, fn_name: str) -> Callable | str:
    """The composition for ``mode``, or ``AUTO``; raises for anything else."""
    if mode == AUTO:
        return AUTO
    if isinstance(mode, str) and mode in MODES:
        return MODES[mode]
    choices = ", ".join(repr(m) for m in [*MODES, AUTO])
    msg = f"mode given to {fn_name} must be one of {choices}, but got {mode!r}."
    raise HVPError(msg)


def output_fn(func: Callable, inputs: Inputs, has_aux: bool) -> Callable[[Any], Any]:
    """``primals -> (func_output, aux)``, the output checked for its type only (torch's first)."""

    def output(primals: Any) -> tuple[Any, Any]:
        result = inputs.call(func, primals)
        if has_aux:
            if not (isinstance(result, tuple) and len(result) == 2):
                msg = (
                    f"With has_aux=True the function given to {inputs.fn_name} must return a "
                    f"pair (output, aux), but it returned {type(result)}"
                    + (f" of length {len(result)}" if isinstance(result, tuple) else "")
                    + "."
                )
                raise TypeError(msg)
            out, aux = result
        else:
            out, aux = result, None
        check_output_types(out, inputs.fn_name)
        return out, aux

    return output


def scalar_fn(func: Callable, inputs: Inputs, has_aux: bool) -> Callable[[Any], Any]:
    """``primals -> (value to differentiate, (func_output, aux))``, checking the output."""
    output = output_fn(func, inputs, has_aux)

    def scalar(primals: Any) -> tuple[jax.Array, Any]:
        out, aux = output(primals)
        check_single_output(out, inputs.fn_name)
        value = out.reshape(())
        if not jnp.issubdtype(value.dtype, jnp.floating):
            # An integer or bool output is a constant, as in torch: its derivatives are zero.
            value = value.astype(jnp.result_type(float))
        return value, (out, aux)

    return scalar


def check_callable(func: Any, fn_name: str) -> None:
    """Raises Python's own error for calling ``func`` (torch's), then what jaxhvp expects."""
    if callable(func):
        return
    try:
        func()  # not callable, so this runs no code: it raises Python's own TypeError
    except TypeError as error:
        msg = (
            f"{error}. The func given to {fn_name} must be callable (a function of the inputs "
            f"that returns a single-element array), but got {type(func)}."
        )
        raise TypeError(msg) from None
