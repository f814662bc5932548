"""What the second-order optax transformations share: argument checks, the objective given
to ``update``, the key carried in the state, and Hutchinson's one-probe diagonal sample.

Hyperparameters are checked where the transformation is built; the extra arguments of
``update`` (``obj_fn``, ``model_fn``) where ``update`` is called (at trace time under
``jax.jit``), so a mistake names the argument before anything is compiled.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import HVPError
from .._sharding import replicated_like
from .._validate import check_key
from ..operators import hessian_operator

try:
    import optax
except ImportError as error:  # pragma: no cover - optax is in the test extra
    _msg = "jaxhvp.optax needs the optional dependency optax: pip install optax."
    raise ImportError(_msg) from error

DEFAULT_KEY_SEED = 0


# --- hyperparameters ----------------------------------------------------------------------


def check_real(
    value: Any,
    name: str,
    fn_name: str,
    *,
    low: float,
    high: float = np.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """A real number in ``[low, high]`` (either end open if asked); returned as given.

    A traced scalar (a hyperparameter under ``optax.inject_hyperparams`` or an outer
    ``jax.jit``) cannot be checked and is returned unchecked.
    """
    if isinstance(value, jax.core.Tracer):
        return value
    number = _as_number(value)
    if number is not None:
        above = number > low if low_open else number >= low
        below = number < high if high_open else number <= high
        if above and below:
            return value
    left = "(" if low_open else "["
    right = ")" if high_open or high == np.inf else "]"
    msg = (
        f"{name} given to {fn_name} must be a real number in {left}{low}, {high}{right}, but "
        f"got {value!r}."
    )
    raise HVPError(msg)


def check_schedule(value: Any, name: str, fn_name: str) -> Any:
    """A non-negative number, or a schedule ``step -> number`` (optax's ``ScalarOrSchedule``)."""
    if callable(value):
        return value
    if isinstance(value, jax.core.Tracer) or _as_number(value) is not None:
        return check_real(value, name, fn_name, low=0.0)
    msg = (
        f"{name} given to {fn_name} must be a non-negative number or a schedule (a callable "
        f"of the step count, e.g. optax.cosine_decay_schedule(...)), but got {value!r}."
    )
    raise TypeError(msg)


def _as_number(value: Any) -> float | None:
    """``value`` as a float if it is one concrete real number, else ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    real = isinstance(value, (jax.Array, np.ndarray)) and (
        jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
    )
    return float(value) if real and np.ndim(value) == 0 else None


def placed_like(params: Any, state: Any) -> Any:
    """The state's scalars (step count, key, damping) replicated over the parameters' mesh:
    a jitted step returns them there, so taking them there from ``init`` spares the step a
    second compilation. Unchanged where the parameters are on no mesh."""
    return jax.tree_util.tree_map(lambda x: replicated_like(x, params) if x.ndim == 0 else x, state)


def initial_key(key: Any, fn_name: str) -> jax.Array:
    """The key the state starts from: the one given, or ``jax.random.key(0)``."""
    if key is None:
        return jax.random.key(DEFAULT_KEY_SEED)
    return check_key(key, fn_name)


# --- the extra arguments of update ----------------------------------------------------------


def check_params(params: Any, fn_name: str) -> None:
    if params is None:
        msg = (
            f"{fn_name}'s update needs the current parameters: call "
            "update(updates, state, params, ...), as optax.apply_updates expects."
        )
        raise TypeError(msg)


def check_extra_fn(fn: Any, name: str, fn_name: str, example: str) -> Callable:
    """An extra argument of ``update`` that must be a function of the parameters."""
    if fn is None:
        msg = (
            f"{fn_name}'s update needs {name}=, a function of the parameters alone, given "
            f"afresh each step for the step's batch: update(updates, state, params, "
            f"{name}={example}). optax.chain passes it on to the transformations that take it."
        )
        raise TypeError(msg)
    if not callable(fn):
        msg = (
            f"{name} given to {fn_name}'s update must be a function of the parameters, e.g. "
            f"{name}={example}, but got {type(fn).__name__} {fn!r}."
        )
        raise TypeError(msg)
    return fn


def check_objective(obj_fn: Any, params: Any, fn_name: str) -> Callable:
    """``obj_fn`` given, callable, and returning one floating scalar at ``params``."""
    obj_fn = check_extra_fn(obj_fn, "obj_fn", fn_name, "lambda p: loss(p, batch)")
    out = jax.eval_shape(obj_fn, params)
    if not (
        isinstance(out, jax.ShapeDtypeStruct)
        and out.shape in ((), (1,))
        and jnp.issubdtype(out.dtype, jnp.floating)
    ):
        given = f"shape {out.shape} and dtype {out.dtype}" if hasattr(out, "shape") else out
        msg = (
            f"obj_fn given to {fn_name}'s update must return the loss as one floating scalar, "
            f"but it returned {given}. Reduce it, e.g. with .mean(), and return no aux."
        )
        raise HVPError(msg)
    return obj_fn


# --- keys and probes ------------------------------------------------------------------------


def split_key(key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(key for the next step, key for this step)``."""
    next_key, step_key = jax.random.split(key)
    return next_key, step_key


def rademacher_like(key: jax.Array, tree: Any) -> Any:
    """Independent Rademacher (+-1) entries in the structure, shapes and dtypes of ``tree``."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    signs = [
        jax.random.rademacher(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)
    ]
    return treedef.unflatten(signs)


def hutchinson_sample(obj_fn: Callable, params: Any, key: jax.Array) -> Any:
    """``u * (H u)`` for one Rademacher probe ``u``, ``H`` the Hessian of ``obj_fn`` at
    ``params``: an unbiased estimate of ``diag(H)``, exact where ``H`` is diagonal.

    Costs one linearisation of the gradient and one Hessian-vector product (about two to
    three gradient evaluations). The parameters are passed to the operator in a list, so a
    tuple of parameters stays one argument of ``obj_fn`` (the operator unpacks tuples).
    """
    u = rademacher_like(key, params)
    op = hessian_operator(lambda boxed: obj_fn(boxed[0]), [params])
    (hu,) = op.mv([u])
    return jax.tree_util.tree_map(lambda a, b: (a * b).astype(a.dtype), u, hu)


def tree_zeros_like(tree: Any) -> Any:
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def moment(old: Any, new: Any, decay: Any) -> Any:
    """The exponential moving average ``decay * old + (1 - decay) * new``, leaf by leaf."""
    return jax.tree_util.tree_map(
        lambda a, b: (decay * a + (1 - decay) * b).astype(a.dtype), old, new
    )


def increment(count: jax.Array) -> jax.Array:
    return optax.safe_int32_increment(count)
