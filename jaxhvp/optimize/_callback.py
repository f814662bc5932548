"""``minimize(callback=...)``: the user's function, called from inside the compiled loop.

Under the caller's ``jax.jit`` the host callback calls the user's function directly. An
eager call runs a cached kernel that must not hold one user's function for the next call,
so its host callback (:func:`eager_hook`, which jaxhvp's kernel cache knows as its own)
calls the function of the call running now, set by :func:`running`.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import _eager
from ._result import IntermediateResult

_LOCK = threading.Lock()  # one eager minimize with a callback at a time
_active: dict[str, Any] = {"callback": None, "error": None}


def _call(callback: Callable, x: Any, fun: Any, nit: Any) -> np.bool_:
    """Whether the callback asks to stop (scipy's ``StopIteration``)."""
    try:
        callback(intermediate_result=IntermediateResult(x, fun, nit))
    except StopIteration:
        return np.bool_(True)
    return np.bool_(False)


@_eager.library_callback
def eager_hook(x: Any, fun: Any, nit: Any) -> np.bool_:
    """The host callback of cached kernels: the current call's callback. Any other error
    it raises stops the loop and is raised again when the call returns."""
    try:
        return _call(_active["callback"], x, fun, nit)
    except BaseException as error:
        _active["error"] = error
        return np.bool_(True)


def traced_hook(callback: Callable) -> Callable:
    """The host callback under the caller's trace: ``callback`` itself."""
    return functools.partial(_call, callback)


@contextlib.contextmanager
def running(callback: Callable) -> Iterator[None]:
    """Makes ``callback`` the one :func:`eager_hook` calls; re-raises what it raised."""
    with _LOCK:
        _active["callback"], _active["error"] = callback, None
        try:
            yield
            error = _active["error"]
        finally:
            _active["callback"] = _active["error"] = None
        if error is not None:
            raise error
