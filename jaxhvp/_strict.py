"""Strict mode: torch's ``strict=True`` checks, decided structurally from traced programs.

Torch raises in strict mode when a value "does not require grad", i.e. when no
differentiable path links it to the inputs. The JAX counterpart is a tangent that is a
symbolic zero: we trace ``jax.jvp`` of a function abstractly (``jax.make_jaxpr`` on shapes
only, so it also works under the user's ``jax.jit`` and never evaluates anything) and follow
which tangent inputs each tangent output is computed from. ``lax.stop_gradient`` and integer
casts cut the path, exactly as ``detach()`` and integer tensors do in torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core

from ._errors import HVPError
from ._inputs import Inputs


def check_product(
    output: Callable, scalar: Callable, inputs: Inputs, product_fn: Callable | None
) -> None:
    """hvp's and vhp's strict checks, in torch's order.

    ``output`` maps primals to ``func``'s output (as ``output_fn`` builds it), ``scalar`` to
    the value differentiated, and ``product_fn`` (given with create_graph) to the product.
    """
    grad_depends = check_gradient(
        lambda p: output(p)[0], lambda p: jax.grad(scalar, has_aux=True)(p)[0], inputs
    )
    # Torch checks each input's product entry in turn: is it there, then does it depend.
    columns = grad_depends.any(axis=0)
    product_depends = (
        None if product_fn is None else tangent_dependence(product_fn, inputs.primals).any(axis=1)
    )
    for i in range(len(columns)):
        if inputs.fn_name == "vhp" and not columns[i]:
            msg = (
                "The jacobian of the user-provided function is independent of input "
                f"{inputs.leaf_name(i)}. This is not allowed in strict mode."
            )
            raise HVPError(msg)
        if product_depends is not None and not product_depends[i]:
            msg = (
                "The hessian of the user-provided function is independent of input "
                f"{inputs.leaf_name(i)}. This is not allowed in strict mode when "
                "create_graph=True."
            )
            raise HVPError(msg)


def tangent_dependence(fn: Callable[[Any], Any], primals: Any) -> np.ndarray:
    """Which input leaves each output leaf of ``fn`` depends on, differentiably.

    Returns a boolean array of shape ``(num_output_leaves, num_input_leaves)``. The analysis
    is structural and conservative: inside loops and conditionals every output is assumed to
    depend on every input of the loop.
    """
    leaves, treedef = jax.tree_util.tree_flatten(primals)
    specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]

    def tangents_out(xs, ts):
        _, t_out = jax.jvp(fn, (treedef.unflatten(xs),), (treedef.unflatten(ts),))
        return jax.tree_util.tree_leaves(t_out)

    closed = jax.make_jaxpr(tangents_out)(specs, specs)
    n = len(leaves)
    in_deps = [frozenset()] * n + [frozenset({i}) for i in range(n)]
    out_deps = _propagate(closed.jaxpr, in_deps)
    return np.array([[i in d for i in range(n)] for d in out_deps], dtype=bool).reshape(-1, n)


def _propagate(jaxpr: Any, in_deps: Sequence[frozenset]) -> list[frozenset]:
    deps: dict[Any, frozenset] = dict(zip(jaxpr.invars, in_deps))

    def read(var: Any) -> frozenset:
        if isinstance(var, jex_core.Literal):
            return frozenset()
        return deps.get(var, frozenset())

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        inner = _inlinable_jaxpr(eqn)
        if inner is not None:
            outs = _propagate(inner, ins)
        else:
            union = frozenset().union(*ins)
            outs = [union] * len(eqn.outvars)
        deps.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _inlinable_jaxpr(eqn: Any) -> Any:
    """The body of a call-like equation (nested jit, closed_call, remat), else None."""
    for name in ("jaxpr", "call_jaxpr"):
        inner = eqn.params.get(name)
        inner = getattr(inner, "jaxpr", inner)
        if isinstance(inner, jex_core.Jaxpr) and len(inner.invars) == len(eqn.invars):
            return inner
    return None


# --- torch's strict-mode checks, in torch's order and wording --------------------------------


def check_output(output_fn: Callable, inputs: Inputs) -> np.ndarray:
    """Raises when an output depends on no input (torch: "does not require gradients").

    ``output_fn`` returns ``func``'s output as given, an array or a tuple of them: torch checks
    every entry before it checks that there is a single one. Returns the dependence matrix.
    """
    depends = tangent_dependence(output_fn, inputs.primals)
    for i, row in enumerate(depends):
        if not row.any():
            msg = (
                f"Output {i} of the user-provided function does not require gradients. The "
                "outputs must be computed in a differentiable manner from the input when "
                "running in strict mode."
            )
            raise HVPError(msg)
    return depends


def check_gradient(
    output_fn: Callable, grad_fn: Callable, inputs: Inputs, *, name_unused_inputs: bool = True
) -> np.ndarray:
    """Torch's checks of the output, then of its gradient ("jacobian"); returns its dependence.

    ``hessian`` passes ``name_unused_inputs=False``: torch's hessian reports an input the
    output ignores through the zero gradient it gets, with the jacobian message.
    """
    output_depends = check_output(output_fn, inputs)
    grad_depends = tangent_dependence(grad_fn, inputs.primals)  # checks: a single output
    for i, row in enumerate(grad_depends):
        name = inputs.leaf_name(i)
        if name_unused_inputs and not output_depends[0, i]:
            msg = (
                f"The output of the user-provided function is independent of input {name}. "
                "This is not allowed in strict mode."
            )
            raise HVPError(msg)
        if not row.any():
            msg = (
                "While computing the hessian, found that the jacobian of the user-provided "
                f"function with respect to input {name} is independent of the input. This is "
                "not allowed in strict mode. You should ensure that your function is twice "
                "differentiable and that the jacobian depends on the inputs (this would be "
                "violated by a linear function for example)."
            )
            raise HVPError(msg)
    return grad_depends


def check_hessian_blocks(
    grad_depends: np.ndarray, hessian_fn: Callable | None, inputs: Inputs
) -> None:
    """hessian's checks of each block in torch's order: not zero, then (create_graph) not constant.

    ``hessian_fn``, given with create_graph, maps primals to the Hessian.
    """
    n = grad_depends.shape[0]
    blocks = None
    if hessian_fn is not None:
        blocks = tangent_dependence(hessian_fn, inputs.primals).reshape(n, n, n).any(axis=-1)
    for i, row in enumerate(grad_depends):
        for j, depends in enumerate(row):
            if not depends:
                msg = (
                    f"Output {inputs.leaf_name(i)} of the user-provided function is independent"
                    f" of input {inputs.leaf_name(j)}. This is not allowed in strict mode."
                )
                raise HVPError(msg)
            if blocks is not None and not blocks[i, j]:
                msg = (
                    "The jacobian of the user-provided function is independent of input "
                    f"{inputs.leaf_name(i)}. This is not allowed in strict mode when "
                    "create_graph=True."
                )
                raise HVPError(msg)
