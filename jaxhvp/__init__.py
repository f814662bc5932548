"""jaxhvp: PyTorch's ``torch.autograd.functional.hvp`` for JAX, over any pytree."""

from . import linalg as linalg
from . import operators as operators
from . import optimize as optimize
from . import spectrum as spectrum
from ._eager import CacheInfo as CacheInfo
from ._eager import cache_clear as cache_clear
from ._eager import cache_info as cache_info
from ._errors import HVPError as HVPError
from ._hessian import hessian as hessian
from ._influence import Influence as Influence
from ._influence import influence as influence
from ._products import hvp as hvp
from ._products import vhp as vhp
from .linalg import SolveInfo as SolveInfo
from .linalg import SolveStatus as SolveStatus
from .linalg import solve as solve
from .operators import GGNOperator as GGNOperator
from .operators import HessianOperator as HessianOperator
from .operators import Operator as Operator
from .operators import empirical_fisher_operator as empirical_fisher_operator
from .operators import fisher_operator as fisher_operator
from .operators import ggn_operator as ggn_operator
from .operators import gnvp as gnvp
from .operators import hessian_operator as hessian_operator
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
    "GGNOperator",
    "HVPError",
    "HessianOperator",
    "Influence",
    "IntermediateResult",
    "MinimizeResult",
    "MinimizeStatus",
    "NewtonCGState",
    "Operator",
    "SolveInfo",
    "SolveStatus",
    "StepInfo",
    "TrustNCGState",
    "cache_clear",
    "cache_info",
    "empirical_fisher_operator",
    "fisher_operator",
    "ggn_operator",
    "gnvp",
    "hessian",
    "hessian_operator",
    "hvp",
    "influence",
    "linalg",
    "minimize",
    "minimize_message",
    "operators",
    "optimize",
    "solve",
    "spectrum",
    "newton_cg_init",
    "newton_cg_step",
    "trust_ncg_init",
    "trust_ncg_step",
    "vhp",
]
