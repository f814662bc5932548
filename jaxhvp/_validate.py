"""Argument checks shared by the operators and the estimators: keys, counts and choices."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import HVPError


def check_key(key: Any, fn_name: str) -> jax.Array:
    """A PRNG key: a typed key (``jax.random.key``) or a raw one (``jax.random.PRNGKey``)."""
    if isinstance(key, (jax.Array, np.ndarray)):
        key = jnp.asarray(key)
        typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        if (typed and key.shape == ()) or (key.dtype == jnp.uint32 and key.shape == (2,)):
            return key
    msg = (
        f"key given to {fn_name} must be one JAX PRNG key, e.g. key=jax.random.key(0), but "
        f"got {_describe(key)}."
    )
    raise TypeError(msg)


def _describe(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray)):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"


def check_count(value: Any, name: str, fn_name: str, *, minimum: int = 1) -> int:
    """A Python int of at least ``minimum`` (bools are not counts)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    msg = f"{name} given to {fn_name} must be an int >= {minimum}, but got {value!r}."
    raise HVPError(msg)


def check_choice(value: Any, name: str, choices: tuple[str, ...], fn_name: str) -> str:
    if isinstance(value, str) and value in choices:
        return value
    options = ", ".join(repr(c) for c in choices)
    msg = f"{name} given to {fn_name} must be one of {options}, but got {value!r}."
    raise HVPError(msg)
