"""``minimize(callback=...)``: the user's function, called from inside the compiled loop.

Under the caller's ``jax.jit`` the host callback calls the user's function directly. An
eager call runs a cached kernel that must not hold one user's function for the next call:
its host callback (:func:`eager_hook`, which jaxhvp's kernel cache knows as its own) receives
a token, an input of the kernel, and calls the function registered under it by
:func:`registered`. No lock is held while the loop runs, so a callback may itself call
``minimize``, and calls from several threads run at once.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from .. import _eager
from ._result import IntermediateResult

_LOCK = threading.Lock()  # guards the registry only
_registry: dict[int, dict[str, Any]] = {}
_tokens = itertools.count(1)


def check(callback: Any) -> None:
    """``callback`` must take scipy's ``intermediate_result`` keyword."""
    if not callable(callback):
        msg = (
            "callback must be callable, as callback(intermediate_result), but got "
            f"{type(callback)}."
        )
        raise TypeError(msg)
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):  # a builtin without a signature: trusted
        return
    try:
        signature.bind(intermediate_result=None)
    except TypeError:
        msg = (
            f"callback must accept the keyword intermediate_result (scipy's new-style callback, "
            f"callback(intermediate_result)), but its signature is {signature}. The legacy "
            "form callback(xk) is not supported: use e.g. "
            "lambda intermediate_result: f(intermediate_result.x)."
        )
        raise TypeError(msg) from None


def _call(callback: Callable, x: Any, fun: Any, nit: Any) -> np.bool_:
    """Whether the callback asks to stop (scipy's ``StopIteration``)."""
    try:
        callback(intermediate_result=IntermediateResult(x, fun, nit))
    except StopIteration:
        return np.bool_(True)
    return np.bool_(False)


@_eager.library_callback
def eager_hook(token: Any, x: Any, fun: Any, nit: Any) -> np.bool_:
    """The host callback of cached kernels: the callback registered under ``token``. Any
    other error it raises stops the loop and is raised again when the call returns."""
    entry = _registry[int(token)]
    try:
        return _call(entry["callback"], x, fun, nit)
    except BaseException as error:
        entry["error"] = error
        return np.bool_(True)


def traced_hook(callback: Callable) -> Callable:
    """The host callback under the caller's trace: ``callback`` itself (no token needed)."""

    def hook(token: Any, x: Any, fun: Any, nit: Any) -> np.bool_:
        return _call(callback, x, fun, nit)

    return hook


@contextlib.contextmanager
def registered(callback: Callable | None) -> Iterator[Any]:
    """A token (an int32 array: data for the kernel, never a recompile) under which
    :func:`eager_hook` finds ``callback``; re-raises what the callback raised."""
    if callback is None:
        yield jnp.zeros((), jnp.int32)
        return
    with _LOCK:
        token = next(_tokens) % (2**31 - 1) or 1
        entry = _registry[token] = {"callback": callback, "error": None}
    try:
        yield jnp.asarray(token, jnp.int32)
    finally:
        with _LOCK:
            _registry.pop(token, None)
    if entry["error"] is not None:
        raise entry["error"]
