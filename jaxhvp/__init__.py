"""jaxhvp: PyTorch's ``torch.autograd.functional.hvp`` for JAX, over any pytree."""

from ._cache import CacheInfo as CacheInfo
from ._cache import cache_clear as cache_clear
from ._cache import cache_info as cache_info
from ._errors import HVPError as HVPError
from ._hessian import hessian as hessian
from ._operator import HessianOperator as HessianOperator
from ._operator import hessian_operator as hessian_operator
from ._products import hvp as hvp
from ._products import vhp as vhp

__version__ = "0.1.0"

__all__ = [
    "CacheInfo",
    "HVPError",
    "HessianOperator",
    "cache_clear",
    "cache_info",
    "hessian",
    "hessian_operator",
    "hvp",
    "vhp",
]
