"""``hessian_operator``: the Hessian at a point, linearized once, as a reusable operator."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from . import _eager
from ._errors import HVPError
from ._inputs import Inputs, as_inputs, as_tangents
from ._modes import AUTO, MODE_NAMES, check_callable, resolve_mode, scalar_fn

_NAME = "hessian_operator"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["value", "grad", "aux", "linear"],
    meta_fields=["mode", "is_tuple"],
)
@dataclasses.dataclass(frozen=True)
class HessianOperator:
    """The Hessian of a scalar function at a point, as a symmetric linear operator.

    Built by :func:`hessian_operator`. A pytree: it can be returned from and passed into
    jit-compiled functions, carried through ``lax`` loops, and used as the ``A`` of
    ``jax.scipy.sparse.linalg.cg``. Vectors have the structure of the ``inputs`` it was built
    at (a tuple for tuple inputs, as in :func:`jaxhvp.hvp`).

    Attributes:
      value: the function's output at the point, as it returned it.
      grad: the gradient at the point, with the structure of the inputs.
      aux: the auxiliary output with ``has_aux=True``, else ``None``.
      linear: the linearized map ``v -> H v``; it holds the residuals of the linearization.
      mode: the AD composition it was linearized with.
    """

    value: Any
    grad: Any
    aux: Any
    linear: Callable
    mode: str
    is_tuple: bool

    def mv(self, v: Any) -> Any:
        """``H v``; ``v`` must match the inputs' structure, shapes and dtypes."""
        return _eager.call(_apply, (), self, (as_tangents(v, self._space()),))

    def __call__(self, v: Any) -> Any:
        return self.mv(v)

    def __matmul__(self, v: Any) -> Any:
        return self.mv(v)

    def matmat(self, vectors: Any, batch_size: int | None = None) -> Any:
        """``H v`` for vectors stacked on a leading axis of every leaf.

        Args:
          vectors: the inputs' structure, each leaf with an extra leading axis of length k.
          batch_size: if given, the products are computed ``batch_size`` vectors at a time
            (``lax.map``), bounding memory; otherwise all k at once (``jax.vmap``).
        """
        _check_stacked(vectors, self.grad)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            msg = f"batch_size must be a positive int or None, but got {batch_size!r}."
            raise HVPError(msg)
        return _eager.call(_matmat, (batch_size,), self, (vectors,))

    def as_matrix(self) -> jax.Array:
        """The dense ``(n, n)`` matrix over the flattened inputs (``ravel_pytree`` order).

        Costs n products and n^2 memory: for small problems.
        """
        return _eager.call(_as_matrix, (), self, ())

    def as_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` over the flattened inputs."""
        from scipy.sparse.linalg import LinearOperator

        flat, _ = ravel_pytree(self.grad)

        def matvec(x: np.ndarray) -> np.ndarray:
            x = jnp.asarray(np.ravel(x), dtype=flat.dtype)
            return np.asarray(_eager.call(_apply_flat, (), self, (x,)))

        n = flat.size
        return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=flat.dtype)

    def as_lineax(self) -> Any:
        """A ``lineax`` operator tagged symmetric (needs ``pip install lineax``)."""
        try:
            import lineax
        except ImportError as error:
            msg = "as_lineax needs the optional dependency lineax: pip install lineax."
            raise ImportError(msg) from error
        structure = jax.tree_util.tree_map(
            lambda g: jax.ShapeDtypeStruct(g.shape, g.dtype), self.grad
        )
        return lineax.FunctionLinearOperator(_LinearMap(self), structure, tags=lineax.symmetric_tag)

    def _space(self) -> Inputs:
        return Inputs(self.grad, self.is_tuple, _NAME)


@functools.partial(jax.tree_util.register_dataclass, data_fields=["op"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class _LinearMap:
    """``v -> H v`` as a pytree callable, for libraries that store the function."""

    op: HessianOperator

    def __call__(self, v: Any) -> Any:
        return self.op.linear(v)


def _apply(op: HessianOperator, v: Any) -> Any:
    return op.linear(v)


def _apply_flat(op: HessianOperator, x: jax.Array) -> jax.Array:
    _, unravel = ravel_pytree(op.grad)
    return ravel_pytree(op.linear(unravel(x)))[0]


def _matmat(op: HessianOperator, vectors: Any, batch_size: int | None) -> Any:
    if batch_size is None:
        return jax.vmap(op.linear)(vectors)
    return lax.map(op.linear, vectors, batch_size=batch_size)


def _as_matrix(op: HessianOperator) -> jax.Array:
    flat, unravel = ravel_pytree(op.grad)
    columns = jax.vmap(lambda e: ravel_pytree(op.linear(unravel(e)))[0])(
        jnp.eye(flat.size, dtype=flat.dtype)
    )
    return columns.T


def _check_stacked(vectors: Any, like: Any) -> None:
    v_tree, x_tree = jax.tree_util.tree_structure(vectors), jax.tree_util.tree_structure(like)
    if v_tree != x_tree:
        msg = (
            "matmat needs the vectors stacked in the structure of the inputs, but inputs has "
            f"structure {x_tree} and the vectors have structure {v_tree}."
        )
        raise HVPError(msg)
    counts = set()
    for path, v, x in zip(
        *zip(*jax.tree_util.tree_flatten_with_path(vectors)[0]),
        jax.tree_util.tree_leaves(like),
    ):
        if jnp.shape(v)[1:] != x.shape or jnp.result_type(v) != x.dtype or jnp.ndim(v) < 1:
            msg = (
                f"matmat needs each leaf of shape (k, *input_shape) and the input's dtype; at "
                f"{jax.tree_util.keystr(path) or 'the vectors'} expected (k, "
                f"*{tuple(x.shape)}) of {x.dtype}, but got {jnp.shape(v)} of "
                f"{jnp.result_type(v)}. Stack the vectors with jnp.stack on axis 0."
            )
            raise HVPError(msg)
        counts.add(jnp.shape(v)[0])
    if len(counts) > 1:
        msg = f"matmat needs the same number of vectors in every leaf, but got {sorted(counts)}."
        raise HVPError(msg)


def hessian_operator(
    func: Callable,
    inputs: Any,
    *,
    mode: str = "fwd-rev",
    has_aux: bool = False,
    jit: bool = True,
) -> HessianOperator:
    """Linearizes the gradient of ``func`` once at ``inputs``; products then reuse it.

    Each product ``op(v)`` runs only the linear part (the tangent or cotangent sweep): the
    function's primal pass and the residuals it needs are computed once, here. Like
    ``jax.linearize``, the operator stores those residuals — memory comparable to one
    gradient evaluation's activations — for as long as it lives.

    Args:
      func: as in :func:`jaxhvp.hvp`; with ``has_aux=True`` it returns ``(output, aux)``.
      inputs: as in :func:`jaxhvp.hvp` (one array, a tuple, or any pytree).
      mode: ``"fwd-rev"`` (default), ``"rev-rev"``, ``"rev-fwd"`` or ``"auto"``, as in
        :func:`jaxhvp.hvp`; for ``"auto"`` the products of each mode are timed.
      has_aux: whether ``func`` returns ``(output, aux)``; ``aux`` is ``op.aux``.
      jit: as in :func:`jaxhvp.hvp`.

    Returns:
      A :class:`HessianOperator` with ``value``, ``grad`` and ``aux`` from the same pass.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> op = jaxhvp.hessian_operator(lambda x: (x**3).sum(), jnp.array([1.0, 2.0]))
      >>> op.value, op.grad
      (Array(9., dtype=float32), Array([ 3., 12.], dtype=float32))
      >>> op @ jnp.array([1.0, 1.0])
      Array([ 6., 12.], dtype=float32)
      >>> x, info = jax.scipy.sparse.linalg.cg(op, op.grad)  # Newton direction
      >>> x
      Array([0.5, 1. ], dtype=float32)
    """
    check_callable(func, _NAME)
    compose = resolve_mode(mode, _NAME)
    if compose == AUTO:
        compose = _eager.AUTO_OPERATOR
    return _eager.call(_linearize, (compose, bool(has_aux)), func, (inputs,), jit=jit)


def _linearize(func: Callable, inputs: Any, compose: Callable, has_aux: bool) -> HessianOperator:
    spec = as_inputs(inputs, _NAME)
    scalar = scalar_fn(func, spec, has_aux)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, spec.primals)
    _, linear, (grad, (value, aux)) = jax.linearize(
        lambda v: compose(scalar, spec.primals, v), zeros, has_aux=True
    )
    return HessianOperator(value, grad, aux, linear, MODE_NAMES[compose], spec.is_tuple)
