"""``hvp`` and ``vhp``: torch.autograd.functional's signatures over any pytree."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax

from . import _eager, _strict
from ._inputs import as_primals_and_tangents
from ._modes import AUTO, check_callable, output_fn, resolve_mode, scalar_fn
from ._sharding import match_layout


def detach(tree: Any, create_graph: bool) -> Any:
    """torch's ``detach()`` unless ``create_graph``: results are cut from differentiation."""
    return tree if create_graph else jax.tree_util.tree_map(lax.stop_gradient, tree)


def product(
    fn_name: str,
    func: Callable,
    inputs: Any,
    v: Any,
    create_graph: bool,
    strict: bool,
    mode: str,
    has_aux: bool,
    jit: bool,
) -> Any:
    """Validates the options of a product and evaluates it, eagerly through the cache."""
    if not callable(func):  # torch checks inputs and v before it calls func
        as_primals_and_tangents(inputs, v, fn_name)
        check_callable(func, fn_name)  # raises
    try:
        options = _options[fn_name, mode, create_graph, strict, has_aux]
    except (KeyError, TypeError):  # new, or unhashable (then invalid: resolve_mode raises)
        options = _static_options(fn_name, mode, create_graph, strict, has_aux)
    out, prod, *aux = _eager.call(_product, options, func, (inputs, v), jit)
    return (out, match_layout(prod, inputs), *aux)


_options: dict[tuple, tuple] = {}  # the arguments of product -> _product's static options


def _static_options(fn_name: str, mode: Any, *flags: Any) -> tuple:
    compose = resolve_mode(mode, fn_name)
    if compose == AUTO:
        compose = _eager.AUTO_PRODUCT
    options = (compose, fn_name, *map(bool, flags))
    if len(_options) < 64 and all(type(f) is bool for f in flags):
        _options[(fn_name, mode, *flags)] = options
    return options


def _product(
    func: Callable,
    inputs: Any,
    v: Any,
    compose: Callable,
    fn_name: str,
    create_graph: bool,
    strict: bool,
    has_aux: bool,
) -> Any:
    spec, vector = as_primals_and_tangents(inputs, v, fn_name)
    scalar = scalar_fn(func, spec, has_aux)
    if strict:
        product_fn = (lambda p: compose(scalar, p, vector)[0]) if create_graph else None
        _strict.check_product(output_fn(func, spec, has_aux), scalar, spec, product_fn)
    prod, (_, (out, aux)) = compose(scalar, spec.primals, vector)
    prod = match_layout(prod, spec.primals)
    result = (detach(out, create_graph), detach(prod, create_graph))
    return (*result, aux) if has_aux else result


def hvp(
    func: Callable,
    inputs: Any,
    v: Any = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    mode: str = "fwd-rev",
    has_aux: bool = False,
    jit: bool = True,
) -> Any:
    """Hessian-vector product ``H v`` of a scalar function, as ``torch.autograd.functional.hvp``.

    Computed forward-over-reverse (``jax.jvp`` of ``jax.grad``) by default: about the cost of
    two or three gradient evaluations, and never the dense Hessian.

    Differentiating through the product: with the default ``create_graph=False`` both results
    are cut from differentiation, as torch detaches them, so ``jax.grad`` of a function of
    them is zero, without an error. Pass ``create_graph=True`` when the product is part of a
    differentiated objective, or build :func:`jaxhvp.hessian_operator` inside the
    differentiated function: its products are always differentiable, with respect to the
    point and the vector, and many of them share one linearization. ``docs/frameworks.md``
    says when to use which, and how to pass Flax and Equinox models.

    Args:
      func: a function of ``inputs`` returning an array with exactly one element (any shape).
      inputs: a single array (``func(inputs)``), a tuple of arrays (``func(*inputs)``), or any
        other pytree of arrays (``func(inputs)``). Floating dtypes only.
      v: the vector, with the structure, shapes and dtypes of ``inputs``. May be ``None`` only
        when ``inputs`` holds a single one-element array; then it is ones.
      create_graph: if False (default), the results are cut from further differentiation, as
        torch detaches them; if True they are differentiable to any order.
      strict: if True, raise when the output, or the gradient with respect to some input, does
        not depend on the inputs (torch's strict mode). If False, such inputs get zeros.
      mode: the AD composition: ``"fwd-rev"`` (default; ``jax.jvp`` of ``jax.grad``),
        ``"rev-rev"`` (``jax.vjp`` of ``jax.grad``), ``"rev-fwd"`` (``jax.grad`` of
        ``jax.jvp``), or ``"auto"`` (the fastest of the three, measured once per signature).
        With several processes (``jax.distributed``), a call on arrays that span processes
        takes process 0's choice in every process (their programs must match), and a call on
        arrays each process holds alone takes ``"fwd-rev"``, untimed.
      has_aux: if True, ``func`` returns ``(output, aux)`` and ``aux`` is returned last, as in
        ``jax.jvp(..., has_aux=True)``.
      jit: if True (default), an eager call runs a cached jit-compiled kernel (see
        docs/eager.md); if False, it runs op by op and reads everything afresh. Calls
        under an outer ``jax.jit``, ``vmap`` or ``grad`` just trace, whatever this says.

    Returns:
      ``(func_output, hvp)``, or ``(func_output, hvp, aux)`` with ``has_aux``: the output as
      ``func`` returned it, and ``H v`` with the structure of ``inputs``.

    Raises:
      TypeError: ``func`` is not callable, or ``inputs``, ``v`` or the output is not an array
        (or a tuple/pytree of arrays).
      HVPError: invalid values (shapes, dtypes, structure, output size, mode, strict-mode
        failures); a subclass of both ``ValueError`` and ``RuntimeError``.

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

      Differentiated through: zeros unless ``create_graph=True`` (``H v = 6 x v`` here).

      >>> import jax
      >>> v = jnp.ones((2, 2))
      >>> jax.grad(lambda x: jaxhvp.hvp(pow_reducer, x, v)[1].sum())(x)
      Array([[0., 0.],
             [0., 0.]], dtype=float32)
      >>> jax.grad(lambda x: jaxhvp.hvp(pow_reducer, x, v, create_graph=True)[1].sum())(x)
      Array([[6., 6.],
             [6., 6.]], dtype=float32)
    """
    return product("hvp", func, inputs, v, create_graph, strict, mode, has_aux, jit)


def vhp(
    func: Callable,
    inputs: Any,
    v: Any = None,
    create_graph: bool = False,
    strict: bool = False,
    *,
    mode: str = "rev-rev",
    has_aux: bool = False,
    jit: bool = True,
) -> Any:
    """Vector-Hessian product ``v^T H``, as ``torch.autograd.functional.vhp``.

    Computed reverse-over-reverse (``jax.vjp`` of ``jax.grad``) by default, as torch does. For
    twice continuously differentiable functions it equals :func:`hvp`. Arguments, results
    and errors are those of :func:`hvp`; only the default ``mode`` differs.

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
    return product("vhp", func, inputs, v, create_graph, strict, mode, has_aux, jit)
