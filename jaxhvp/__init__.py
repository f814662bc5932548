"""jaxhvp: PyTorch's ``torch.autograd.functional.hvp`` for JAX, over any pytree."""

from . import optimize as optimize
from . import spectrum as spectrum
from ._eager import CacheInfo as CacheInfo
from ._eager import cache_clear as cache_clear
from ._eager import cache_info as cache_info
from ._errors import HVPError as HVPError
from ._hessian import hessian as hessian
from ._operator import HessianOperator as HessianOperator
from ._operator import hessian_operator as hessian_operator
from ._products import hvp as hvp
from ._products import vhp as vhp
from .optimize import IntermediateResult as IntermediateResult
from .optimize import MinimizeResult as MinimizeResult
from .optimize import MinimizeStatus as MinimizeStatus
from .optimize import NewtonCGState as NewtonCGState
from .optimize import StepInfo as StepInfo
from .optimize import TrustNCGState as TrustNCGState
from .optimize import minimize as minimize
from .optimize import minimize_message as minimize_message
from .optimize import newton_cg_init as newton_cg_init
from .optimize import newton_cg_step as newton_cg_step
from .optimize import trust_ncg_init as trust_ncg_init
from .optimize import trust_ncg_step as trust_ncg_step

__version__ = "0.1.0"

__all__ = [
    "CacheInfo",
    "HVPError",
    "HessianOperator",
    "IntermediateResult",
    "MinimizeResult",
    "MinimizeStatus",
    "NewtonCGState",
    "StepInfo",
    "TrustNCGState",
    "cache_clear",
    "cache_info",
    "hessian",
    "hessian_operator",
    "hvp",
    "minimize",
    "minimize_message",
    "optimize",
    "spectrum",
    "newton_cg_init",
    "newton_cg_step",
    "trust_ncg_init",
    "trust_ncg_step",
    "vhp",
]
