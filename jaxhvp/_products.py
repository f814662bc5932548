"""Hessian products with torch.autograd.functional's signatures: ``hvp``, ``vhp``, ``hessian``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from . import _cache, _strict
from ._errors import HVPError
from ._inputs import Inputs, as_inputs, as_tangents, check_output

# --- the AD compositions: (grad_fn, primals, vector) -> (func_output, product) ---------------
# grad_fn maps primals to (gradient, func_output), as jax.grad(..., has_aux=True) does.


def fwd_rev(grad_fn: Callable, primals: Any, vector: Any) -> tuple[Any, Any]:
    """Forward-over-reverse: ``jax.jvp`` of ``jax.grad``; gives H v."""
    _, hv, out = jax.jvp(grad_fn, (primals,), (vector,), has_aux=True)
    return out, hv


def rev_rev(grad_fn: Callable, primals: Any, vector: Any) -> tuple[Any, Any]:
    """Reverse-over-reverse: ``jax.vjp`` of ``jax.grad``; gives v^T H."""
    _, pullback, out = jax.vjp(grad_fn, primals, has_aux=True)
    (vh,) = pullback(vector)
    return out, vh


def scalar_fn(func: Callable, inputs: Inputs) -> Callable[[Any], tuple[jax.Array, Any]]:
    """``primals -> (scalar to differentiate, func_output as func returned it)``."""

    def scalar(primals: Any) -> tuple[jax.Array, Any]:
        out = inputs.call(func, primals)
        check_output(out, inputs.fn_name)
        value = out.reshape(())
        if not jnp.issubdtype(value.dtype, jnp.floating):
            # An integer or bool output is a constant, as in torch: its derivatives are zero.
            value = value.astype(jnp.result_type(float))
        return value, out

    return scalar


def _check_callable(func: Any, fn_name: str) -> None:
    if not callable(func):
        msg = (
            f"The func given to {fn_name} must be callable (a function of the inputs that "
            f"returns a single-element array), but got {type(func)}."
        )
        raise TypeError(msg)


def _detach(tree: Any, create_graph: bool) -> Any:
    """torch's ``detach()`` unless ``create_graph``: results are cut from differentiation."""
    return tree if create_graph else jax.tree_util.tree_map(lax.stop_gradient, tree)


# --- hvp and vhp ------------------------------------------------------------------------------


def product(
    compose: Callable,
    fn_name: str,
    func: Callable,
    inputs: Any,
    v: Any,
    create_graph: bool,
    strict: bool,
    jit: bool,
) -> tuple[Any, Any]:
    """Validates a torch-style call and evaluates one AD composition on it.

    Eager calls go through the kernel cache; under an outer trace, or with ``jit=False``,
    the call is traced (or run op by op) directly.
    """
    _check_callable(func, fn_name)
    options = (compose, fn_name, bool(create_graph), bool(strict))
    if jit:
        return _cache.call(_product, options, func, (inputs, v))
    return _product(func, inputs, v, *options)


def _product(
    func: Callable,
    inputs: Any,
    v: Any,
    compose: Callable,
    fn_name: str,
    create_graph: bool,
    strict: bool,
) -> tuple[Any, Any]:
    spec = as_inputs(inputs, fn_name)
    vector = as_tangents(v, spec)
    scalar = scalar_fn(func, spec)
    grad_fn = jax.grad(scalar, has_aux=True)
    if strict:
        grad_depends = _strict.check_gradient(lambda p: scalar(p)[0], lambda p: grad_fn(p)[0], spec)
        if compose is rev_rev:
            _strict.check_columns(grad_depends, spec)
        if create_graph:
            _strict.check_product_depends(lambda p: compose(grad_fn, p, vector)[1], spec)
    out, prod = compose(grad_fn, spec.primals, vector)
    return _detach(out, create_graph), _detach(prod, create_graph)


def hvp(
    func: Callable,
    inputs: Any,
    v: Any = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    jit: bool = True,
) -> tuple[Any, Any]:
    """Hessian-vector product ``H v`` of a scalar function, as ``torch.autograd.functional.hvp``.

    Computed forward-over-reverse (``jax.jvp`` of ``jax.grad``): about the cost of two or
    three gradient evaluations, and never the dense Hessian.

    Args:
      func: a function of ``inputs`` returning an array with exactly one element (any shape).
      inputs: a single array (``func(inputs)``), a tuple of arrays (``func(*inputs)``), or any
        other pytree of arrays (``func(inputs)``). Floating dtypes only.
      v: the vector, with the structure, shapes and dtypes of ``inputs``. May be ``None`` only
        when ``inputs`` holds a single one-element array; then it is ones.
      create_graph: if False (default), both results are cut from further differentiation, as
        torch detaches them; if True they are differentiable to any order.
      strict: if True, raise when the output, or the gradient with respect to some input, does
        not depend on the inputs (torch's strict mode). If False, such inputs get zeros.
      jit: if True (default), an eager call runs a cached jit-compiled kernel (see the README's
        "Eager calls" policy); if False, it runs op by op and reads everything afresh. Calls
        under an outer ``jax.jit``, ``vmap`` or ``grad`` just trace, whatever this says.

    Returns:
      ``(func_output, hvp)``: the output as ``func`` returned it, and ``H v`` with the
      structure of ``inputs``.

    Raises:
      TypeError: ``func`` is not callable, or ``inputs``, ``v`` or the output is not an array
        (or a tuple/pytree of arrays).
      HVPError: invalid values (shapes, dtypes, structure, output size, strict-mode failures);
        a subclass of both ``ValueError`` and ``RuntimeError``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def pow_reducer(x):
      ...     return (x**3).sum()
      >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
      >>> out, hv = jaxhvp.hvp(pow_reducer, x, jnp.ones((2, 2)))
      >>> out
      Array(100., dtype=float32)
      >>> hv
      Array([[ 6., 12.],
             [18., 24.]], dtype=float32)
    """
    return product(fwd_rev, "hvp", func, inputs, v, create_graph, strict, jit)


def vhp(
    func: Callable,
    inputs: Any,
    v: Any = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    jit: bool = True,
) -> tuple[Any, Any]:
    """Vector-Hessian product ``v^T H``, as ``torch.autograd.functional.vhp``.

    Computed reverse-over-reverse (``jax.vjp`` of ``jax.grad``). For twice continuously
    differentiable functions it equals :func:`hvp`. Arguments, results and errors are those
    of :func:`hvp`.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> def pow_adder_reducer(x, y):
      ...     return (2 * x**2 + 3 * y**2).sum()
      >>> inputs = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
      >>> v = (jnp.zeros(2), jnp.ones(2))
      >>> out, (vh_x, vh_y) = jaxhvp.vhp(pow_adder_reducer, inputs, v)
      >>> vh_y
      Array([6., 6.], dtype=float32)
    """
    return product(rev_rev, "vhp", func, inputs, v, create_graph, strict, jit)


# --- the dense Hessian ------------------------------------------------------------------------

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
      func, inputs, create_graph, strict, jit: as in :func:`hvp`.
      vectorize: if True, all Hessian rows are computed at once with ``jax.vmap``; if False
        (default), one row at a time with ``lax.map``, which bounds memory.
      outer_jacobian_strategy: ``"reverse-mode"`` (default; rows by ``jax.vjp`` of
        ``jax.grad``) or ``"forward-mode"`` (columns by ``jax.jvp`` of ``jax.grad``). As in
        torch, ``"forward-mode"`` needs ``vectorize=True`` and supports neither
        ``create_graph`` nor ``strict``.

    Returns:
      For a single array of shape ``s``, an array of shape ``s + s``. For a tuple of ``n``
      arrays, a tuple of ``n`` tuples of blocks, block ``[i][j]`` of shape
      ``s_i + s_j``. For any other pytree, that pytree with each leaf ``i`` replaced by a
      pytree of blocks ``[i][j]`` (the nesting ``jax.hessian`` uses).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxhvp
      >>> jaxhvp.hessian(lambda x: (x**3).sum(), jnp.array([1.0, 2.0]))
      Array([[ 6.,  0.],
             [ 0., 12.]], dtype=float32)
    """
    fn_name = "hessian"
    _check_callable(func, fn_name)
    if outer_jacobian_strategy not in _STRATEGIES:
        msg = (
            'Expected strategy to be either "forward-mode" or "reverse-mode", but got '
            f"{outer_jacobian_strategy!r}."
        )
        raise HVPError(msg)
    forward = outer_jacobian_strategy == "forward-mode"
    if forward and create_graph:
        msg = (
            "torch.autograd.functional.jacobian: `create_graph=True` and "
            '`strategy="forward-mode"` are not supported together (yet). Please either set '
            '`create_graph=False` or `strategy="reverse-mode"`.'
        )
        raise HVPError(msg)
    if forward and strict:
        msg = (
            "torch.autograd.functional.jacobian: `strict=True` and "
            '`strategy="forward-mode"` are not supported together (yet). Please either set '
            '`strict=False` or `strategy="reverse-mode"`.'
        )
        raise HVPError(msg)
    as_inputs(inputs, fn_name)
    if forward and not vectorize:
        msg = (
            "Computing Jacobian using forward-AD or forward-over-reverse Hessian is only "
            "implemented for `vectorize=True`."
        )
        raise HVPError(msg)
    if strict and vectorize:
        msg = (
            "torch.autograd.functional.jacobian: `strict=True` and `vectorized=True` are not "
            "supported together. Please either set `strict=False` or `vectorize=False`."
        )
        raise HVPError(msg)

    options = (bool(create_graph), bool(strict), forward, bool(vectorize))
    if jit:
        return _cache.call(_hessian, options, func, (inputs,))
    return _hessian(func, inputs, *options)


def _hessian(
    func: Callable, inputs: Any, create_graph: bool, strict: bool, forward: bool, vectorize: bool
) -> Any:
    spec = as_inputs(inputs, "hessian")
    scalar = scalar_fn(func, spec)
    grad_fn = jax.grad(scalar, has_aux=True)
    dense = functools.partial(dense_hessian, grad_fn, forward=forward, vectorize=vectorize)
    if strict:
        grad_depends = _strict.check_gradient(
            lambda p: scalar(p)[0], lambda p: grad_fn(p)[0], spec, name_unused_inputs=False
        )
        _strict.check_hessian_blocks(grad_depends, dense if create_graph else None, spec)
    return _detach(dense(spec.primals), create_graph)


def dense_hessian(grad_fn: Callable, primals: Any, *, forward: bool, vectorize: bool) -> Any:
    """All Hessian blocks, from products with unit vectors of one input leaf at a time."""
    leaves, treedef = jax.tree_util.tree_flatten(primals)

    def unit(leaf_index: int, k: jax.Array) -> Any:
        basis = [jnp.zeros_like(x) for x in leaves]
        x = leaves[leaf_index]
        basis[leaf_index] = jax.nn.one_hot(k, x.size, dtype=x.dtype).reshape(x.shape)
        return treedef.unflatten(basis)

    if forward:  # column blocks: H e_k, by jvp of the gradient

        def product(leaf_index: int, k: jax.Array) -> Any:
            return fwd_rev(grad_fn, primals, unit(leaf_index, k))[1]
    else:  # row blocks: e_k^T H, by vjp of the gradient

        def product(leaf_index: int, k: jax.Array) -> Any:
            return rev_rev(grad_fn, primals, unit(leaf_index, k))[1]

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
