"""Everything about eager calls, behind one entry point: :func:`call`.

``_walk`` splits a function into a key and the arrays it reads (``_values`` sorts the values
it meets, ``_guard`` re-checks a split cheaply), ``_swap`` puts tracers into the user's
objects while a kernel traces and undoes what a trace wrote, ``_store``
keeps the compiled kernels within one bound, ``_auto`` decides ``mode="auto"``, and ``_jax``
is the only module that reads JAX internals.
"""

from . import _auto as _auto
from ._auto import OPERATOR as AUTO_OPERATOR
from ._auto import PRODUCT as AUTO_PRODUCT
from ._call import PerSignature as PerSignature
from ._call import cache_clear as cache_clear
from ._call import cache_info as cache_info
from ._call import call as call
from ._call import is_eager as is_eager
from ._jax import library_callback as library_callback
from ._store import CacheInfo as CacheInfo
from ._values import Static as Static
from ._values import is_array as is_array

__all__ = [
    "AUTO_OPERATOR",
    "AUTO_PRODUCT",
    "CacheInfo",
    "PerSignature",
    "Static",
    "cache_clear",
    "cache_info",
    "call",
    "is_array",
    "is_eager",
    "library_callback",
]
