"""``hessian``: the dense Hessian with torch.autograd.functional's signature and layout."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from . import _eager, _strict
from ._errors import HVPError, NotSupportedError, StrategyError
from ._inputs import as_inputs, check_input_types
from ._modes import check_callable, fwd_rev, output_fn, rev_rev, scalar_fn
from ._products import detach

_STRATEGIES = ("forward-mode", "reverse-mode")


def hessian(
    func: Callable,
    inputs: Any,
    create_graph: bool = False,
    strict: bool = False,
    vectorize: bool = False,
    outer_jacobian_strategy: str = "reverse-mode",
    *,
    jit: bool = True,
) -> Any:
    """The dense Hessian of a scalar function, as ``torch.autograd.functional.hessian``.

    Memory grows with the square of the number of inputs: use :func:`hvp` for large problems.

    Args:
      func: as in :func:`hvp`.
      inputs: as in :func:`hvp`.
      create_graph: as in :func:`hvp`.
      strict: as in :func:`hvp`.
      vectorize: if True, all Hessian rows are computed at once with ``jax.vmap``; if False
        (default), one row at a time with ``lax.map``, which bounds memory.
      outer_jacobian_strategy: ``"reverse-mode"`` (default; rows by ``jax.vjp`` of
        ``jax.grad``) or ``"forward-mode"`` (columns by ``jax.jvp`` of ``jax.grad``). As in
        torch, ``"forward-mode"`` needs ``vectorize=True`` and supports neither
        ``create_graph`` nor ``strict``.
      jit: as in :func:`hvp`.

    Returns:
      For a single array of shape ``s``, an array of shape ``s + s``. For a tuple of ``n``
      arrays, a tuple of ``n`` tuples of blocks, block ``[i][j]`` of shape
      ``s_i + s_j``. For any other pytree, that pytree with each leaf ``i`` replaced by a
      pytree of blocks ``[i][j]`` (the nesting ``jax.hessian`` uses).

    Raises:
      TypeError, HVPError: as :func:`hvp`, in torch's order of checks. Where torch raises a
        narrower class, the ``HVPError`` is also one: ``AssertionError`` for an unknown
        ``outer_jacobian_strategy``, ``NotImplementedError`` for ``"forward-mode"`` with
        ``create_graph=True`` or ``vectorize=False``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> jaxhvp.hessian(lambda x: (x**3).sum(), jnp.array([1.0, 2.0]))
      Array([[ 6.,  0.],
             [ 0., 12.]], dtype=float32)
    """
    fn_name = "hessian"
    check_input_types(inputs, fn_name)  # torch's order of checks, up to calling func
    if outer_jacobian_strategy not in _STRATEGIES:
        msg = (
            'Expected strategy to be either "forward-mode" or "reverse-mode". Got '
            f"{outer_jacobian_strategy!r}."
        )
        raise StrategyError(msg)
    forward = outer_jacobian_strategy == "forward-mode"
    if forward and create_graph:
        msg = (
            "torch.autograd.functional.jacobian: `create_graph=True` and "
            '`strategy="forward-mode"` are not supported together (yet). Please either set '
            '`create_graph=False` or `strategy="reverse-mode"`.'
        )
        raise NotSupportedError(msg)
    if forward and strict:
        msg = (
            "torch.autograd.functional.jacobian: `strict=True` and "
            '`strategy="forward-mode"` are not supported together (yet). Please either set '
            '`strict=False` or `strategy="reverse-mode"`.'
        )
        raise HVPError(msg)
    if forward and not vectorize:
        # torch's wording, missing space included: our message starts with torch's.
        msg = (
            "Computing Jacobian using forward-AD or forward-over-reverse Hessian is"
            "only implemented for `vectorize=True`."
        )
        raise NotSupportedError(msg)
    as_inputs(inputs, fn_name, forward=forward)
    check_callable(func, fn_name)

    options = (bool(create_graph), bool(strict), forward, bool(vectorize))
    return _eager.call(_hessian, options, func, (inputs,), jit=jit)


def _hessian(
    func: Callable, inputs: Any, create_graph: bool, strict: bool, forward: bool, vectorize: bool
) -> Any:
    spec = as_inputs(inputs, "hessian")
    scalar = scalar_fn(func, spec, has_aux=False)
    grad_fn = jax.grad(scalar, has_aux=True)
    dense = functools.partial(dense_hessian, scalar, forward=forward, vectorize=vectorize)
    if strict:
        output = output_fn(func, spec, has_aux=False)
        grad_depends = _strict.check_gradient(
            lambda p: output(p)[0], lambda p: grad_fn(p)[0], spec, name_unused_inputs=False
        )
        if vectorize:  # torch raises this after its checks of the output and gradient
            msg = (
                "torch.autograd.functional.jacobian: `strict=True` and `vectorized=True` are "
                "not supported together. Please either set `strict=False` or "
                "`vectorize=False`."
            )
            raise HVPError(msg)
        _strict.check_hessian_blocks(grad_depends, dense if create_graph else None, spec)
    return detach(dense(spec.primals), create_graph)


def dense_hessian(scalar: Callable, primals: Any, *, forward: bool, vectorize: bool) -> Any:
    """All Hessian blocks, from products with unit vectors of one input leaf at a time."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)

    def unit(leaf_index: int, k: jax.Array) -> Any:
        basis = [jnp.zeros_like(x) for x in leaves]
        x = leaves[leaf_index]
        basis[leaf_index] = jax.nn.one_hot(k, x.size, dtype=x.dtype).reshape(x.shape)
        return treedef.unflatten(basis)

    if forward:  # column blocks: H e_k, by jvp of the gradient

        def product(leaf_index: int, k: jax.Array) -> Any:
            return fwd_rev(scalar, primals, unit(leaf_index, k))[0]
    else:  # row blocks: e_k^T H, by vjp of the gradient

        def product(leaf_index: int, k: jax.Array) -> Any:
            return rev_rev(scalar, primals, unit(leaf_index, k))[0]

    stacked = []
    for index, x in enumerate(leaves):
        one = functools.partial(product, index)
        ks = jnp.arange(x.size)
        stacked.append(jax.vmap(one)(ks) if vectorize else lax.map(one, ks))
    stacked = [jax.tree_util.tree_leaves(s) for s in stacked]

    def block(i: int, j: int) -> jax.Array:
        xi, xj = leaves[i], leaves[j]
        if forward:  # stacked[j][i] has shape (size_j,) + shape_i
            return jnp.moveaxis(stacked[j][i], 0, -1).reshape(xi.shape + xj.shape)
        return stacked[i][j].reshape(xi.shape + xj.shape)

    n = len(leaves)
    return treedef.unflatten([treedef.unflatten([block(i, j) for j in range(n)]) for i in range(n)])
