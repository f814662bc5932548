"""Status codes to words: the codes live in compiled loops, the messages outside them."""

from __future__ import annotations

import enum
from typing import Any

import jax
import numpy as np

from ._errors import HVPError


def message_for(status: Any, messages: dict[enum.IntEnum, str], fn_name: str) -> Any:
    """The message of a status code, or a numpy array of messages for an array of codes.

    Raises ``TypeError`` for a tracer (messages are strings and cannot exist under
    ``jax.jit``) and :class:`HVPError` for a value that is not one of the codes.
    """
    if isinstance(status, jax.core.Tracer):
        msg = (
            f"{fn_name} needs a concrete status code, but got a tracer: messages are strings "
            "and cannot exist inside jax.jit or jax.vmap. Return the status from the traced "
            f"function and call {fn_name} on it outside."
        )
        raise TypeError(msg)
    codes = np.asarray(status)
    known = {int(code): code for code in messages}
    if not np.issubdtype(codes.dtype, np.integer):
        msg = f"Expected an integer status code, but got {status!r} of dtype {codes.dtype}."
        raise HVPError(msg)
    unknown = sorted(set(codes.ravel().tolist()) - set(known))
    if unknown:
        names = {number: code.name for number, code in known.items()}
        msg = f"Unknown status code(s) {unknown}; the codes of {fn_name} are {names}."
        raise HVPError(msg)
    if codes.ndim == 0:
        return messages[known[int(codes)]]
    return np.vectorize(lambda c: messages[known[int(c)]], otypes=[object])(codes)
