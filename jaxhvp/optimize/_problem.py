"""The objective as the solvers see it: flat vectors, with the gradient and Hessian products
taken from ``fun`` by automatic differentiation or from the user's ``jac`` and ``hessp``.

Also the argument checks every entry point of the package shares.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import HVPError
from .._sharding import match_layout, ravel
from .._structure import difference
from ..operators import Operator, hessian_operator


def check_callable(fun: Any, name: str = "fun", form: str = "fun(x, *args) -> scalar") -> None:
    """``fun`` must be callable, called as ``form``."""
    if not callable(fun):
        msg = f"{name} must be callable, as {form}, but got {type(fun)}."
        raise TypeError(msg)


def as_floating(tree: Any, name: str) -> Any:
    """``tree`` with jax array leaves, all real floating; raises with the fix otherwise.

    A list or tuple of Python numbers is one vector, as scipy reads ``x0=[-1.2, 1.0]``.
    """
    if isinstance(tree, (list, tuple)) and tree and all(_is_number(v) for v in tree):
        tree = np.asarray(tree, dtype=float)
    leaves = jax.tree_util.tree_leaves(tree)
    if not leaves:
        msg = f"{name} must contain at least one array, but got {tree!r}, which has no leaves."
        raise HVPError(msg)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        where = f"{name}{jax.tree_util.keystr(path)}"
        if not isinstance(leaf, (jax.Array, np.ndarray, np.generic, float, int)):
            msg = f"{name} must be an array or a pytree of arrays, but {where} is a {type(leaf)}."
            raise TypeError(msg)
        dtype = jnp.result_type(leaf)
        if not jnp.issubdtype(dtype, jnp.floating):
            msg = (
                f"{name} must hold real floating arrays, but {where} has dtype {dtype}; "
                "convert it, e.g. with .astype(float)."
            )
            raise HVPError(msg)
    if sum(int(np.size(leaf)) for leaf in leaves) == 0:
        msg = (
            f"{name} has no elements (its arrays are all empty): there is nothing to minimise. "
            "Pass at least one variable."
        )
        raise HVPError(msg)
    return jax.tree_util.tree_map(jnp.asarray, tree)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def option_count(name: str, value: Any, minimum: int | None = None) -> int | None:
    """An iteration-count option as an int, or None: a real number (scipy compares the count
    with it, so 2.5 allows 3), of any sign (as scipy), at least ``minimum`` if given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        msg = f"options[{name!r}] must be a number or None, but got {type(value)}."
        raise TypeError(msg)
    if math.isnan(value):
        msg = f"options[{name!r}] must be a number, but got nan."
        raise HVPError(msg)
    count = math.ceil(value) if math.isfinite(value) else int(np.iinfo(np.int32).max)
    count = max(min(count, int(np.iinfo(np.int32).max)), int(np.iinfo(np.int32).min))
    if minimum is not None and count < minimum:
        msg = f"options[{name!r}] must be at least {minimum}, but got {value}."
        raise HVPError(msg)
    return count


def option_float(name: str, value: Any) -> float:
    """A number option as a Python float (hashable, for the compiled-kernel cache key)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        msg = f"options[{name!r}] must be a number, but got {value!r}."
        raise TypeError(msg) from None


def finite(*values: jax.Array) -> jax.Array:
    """Whether every element of every value is finite (NaN and Inf are not)."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(v)) for v in values]))


def count() -> jax.Array:
    """A zero counter: counters are int32 arrays, as jax.scipy.optimize keeps them."""
    return jnp.zeros((), jnp.int32)


class Problem:
    """``fun(x, *args)`` over one flat vector ``x``, with its derivatives.

    ``jac`` is None (the gradient by reverse mode), True (``fun`` returns ``(value,
    gradient)``) or a callable ``jac(x, *args)``; ``hessp`` is None (Hessian products
    by forward-over-reverse differentiation of the gradient) or ``hessp(x, p, *args)``, in
    which case nothing is differentiated twice; ``curvature`` is None or
    ``curvature(x, *args)`` returning a jaxhvp operator (a GGN, a Fisher, a damped
    Hessian), built once per point. Built inside the solve's trace.
    """

    def __init__(
        self,
        fun: Callable,
        x0: Any,
        args: tuple,
        jac: Any = None,
        hessp: Any = None,
        curvature: Callable | None = None,
    ):
        self.x0, self.unravel = ravel(x0)
        self.like = x0  # the structure and the layout of results
        self.treedef = jax.tree_util.tree_structure(x0)
        self.dtype = self.x0.dtype
        self._fun, self._jac, self._hessp, self._args = fun, jac, hessp, args
        self._curvature = curvature

    def tree(self, x: jax.Array) -> Any:
        """A flat vector as a result: in the structure of ``x0``, each leaf laid out as x0's."""
        return match_layout(self.unravel(x), self.like)

    # --- the user's functions on flat vectors --------------------------------------------

    def _call(self, x: jax.Array) -> Any:
        return self._fun(self.unravel(x), *self._args)

    def value(self, x: jax.Array) -> jax.Array:
        """The objective at ``x``, a scalar of the solve's dtype."""
        out = self._call(x)
        if self._jac is True:
            out = _pair(out)[0]
        return _scalar(out, self.dtype)

    def value_and_grad(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The objective and its gradient at ``x``: reverse mode, or the user's gradient."""
        if self._jac is None:
            return jax.value_and_grad(self.value)(x)
        if self._jac is True:
            f, g = _pair(self._call(x))
            return _scalar(f, self.dtype), self._flat(g, "the gradient fun returns")
        return self.value(x), self._flat(self._jac(self.unravel(x), *self._args), "jac")

    def _flat(self, tree: Any, name: str) -> jax.Array:
        """A result of ``jac`` or ``hessp`` (structure and shapes of ``x0``, floating) as a
        flat vector."""
        structure = jax.tree_util.tree_structure(tree)
        if structure != self.treedef:
            msg = (
                f"{name} must return a pytree with the structure of x0, but "
                f"{difference(self.unravel(self.x0), tree, 'x0', name + '(...)')}."
            )
            raise HVPError(msg)
        leaves = jax.tree_util.tree_leaves(tree)
        expected = jax.tree_util.tree_leaves(self.unravel(self.x0))
        for path_leaf, leaf, like in zip(
            jax.tree_util.tree_flatten_with_path(tree)[0], leaves, expected
        ):
            where = f"{name}(...){jax.tree_util.keystr(path_leaf[0])}"
            shape, dtype = np.shape(leaf), jnp.result_type(leaf)
            if shape != like.shape:
                msg = (
                    f"{name} must return arrays with the shapes of x0, but {where} has shape "
                    f"{shape} where x0 has {like.shape}."
                )
                raise HVPError(msg)
            if not jnp.issubdtype(dtype, jnp.floating):
                msg = (
                    f"{name} must return floating arrays, but {where} has dtype {dtype}: an "
                    "integer result would drop the derivatives. Return x0's dtype."
                )
                raise HVPError(msg)
        flat, _ = ravel(tree)
        return flat.astype(self.dtype)

    # --- what the solvers use ------------------------------------------------------------

    def linearize(self, x: jax.Array) -> tuple[jax.Array, jax.Array, Callable]:
        """``(value, gradient, v -> H v)`` at ``x``: one linearisation per point.

        With neither ``jac`` nor ``hessp``, :func:`jaxhvp.hessian_operator` computes the value,
        the gradient and the residuals of the product once (forward-over-reverse); each product
        then runs only the linear sweep.
        """
        if self._curvature is not None:
            f, g = self.value_and_grad(x)
            op = self._operator(x)
            return f, g, lambda v: self._flat(op.mv(self.unravel(v)), "curvature(...).mv")
        if self._hessp is not None:
            f, g = self.value_and_grad(x)
            return (
                f,
                g,
                lambda v: self._flat(
                    self._hessp(self.unravel(x), self.unravel(v), *self._args), "hessp"
                ),
            )
        if self._jac is None:
            op = hessian_operator(self.value, x)
            return op.value.reshape(()), op.grad, op.mv
        if self._jac is True:
            (f, g), product = jax.linearize(self.value_and_grad, x)
            return f, g, lambda v: product(v)[1]
        g, product = jax.linearize(lambda y: self.value_and_grad(y)[1], x)  # value not linearised
        return self.value(x), g, product

    def _operator(self, x: jax.Array) -> Operator:
        op = self._curvature(self.unravel(x), *self._args)
        if not isinstance(op, Operator):
            msg = (
                "curvature must return a jaxhvp operator (e.g. jaxhvp.ggn_operator(...) or "
                f"jaxhvp.hessian_operator(...) + damping), but it returned {_describe(op)}."
            )
            raise TypeError(msg)
        structure = jax.tree_util.tree_structure(op.like)
        if structure != self.treedef:
            msg = (
                "curvature must return an operator on vectors with the structure of x0, but "
                f"{difference(self.unravel(self.x0), op.like, 'x0', 'op.like')}."
            )
            raise HVPError(msg)
        return op

    def gradient(self, x: jax.Array) -> jax.Array:
        """The gradient at ``x`` alone."""
        return self.value_and_grad(x)[1]

    def directional(self, x: jax.Array, p: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(f(x), <grad f(x), p>)``: a line-search trial, by one forward-mode product when
        everything is differentiated, else from the (user's or reverse-mode) gradient: with
        ``hessp``, ``fun`` need not support forward mode at all."""
        if self._jac is None and self._hessp is None and self._curvature is None:
            return jax.jvp(self.value, (x,), (p,))
        f, g = self.value_and_grad(x)
        return f, g @ p


def _pair(out: Any) -> tuple[Any, Any]:
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        msg = (
            "With jac=True, fun must return a pair (value, gradient), as scipy's "
            f"minimize(jac=True) expects, but it returned {_describe(out)}."
        )
        raise HVPError(msg)
    return out[0], out[1]


def _describe(value: Any) -> str:
    """A user's value in words, never a tracer's class."""
    if isinstance(value, (jax.Array, np.ndarray)):
        return f"an array of shape {np.shape(value)}"
    return f"a {type(value).__name__}"


def _scalar(out: Any, dtype: Any) -> jax.Array:
    """The objective's output as a scalar of the solve's dtype; checked at trace time."""
    if not isinstance(out, (jax.Array, np.ndarray, float)) or np.size(out) != 1:
        msg = (
            "fun must return a single value (a floating array with one element), but returned "
            f"{_describe(out)}; reduce it to a scalar, e.g. with .sum(), or return a float."
        )
        raise HVPError(msg)
    out = jnp.asarray(out)
    if not jnp.issubdtype(out.dtype, jnp.floating):
        msg = f"fun must return a floating value, but returned dtype {out.dtype}."
        raise HVPError(msg)
    return out.reshape(()).astype(dtype)
