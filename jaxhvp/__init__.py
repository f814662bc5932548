"""jaxhvp: PyTorch's ``torch.autograd.functional.hvp`` for JAX, over any pytree."""

from ._errors import HVPError as HVPError
from ._products import hessian as hessian
from ._products import hvp as hvp
from ._products import vhp as vhp

__version__ = "0.1.0"

__all__ = ["HVPError", "hessian", "hvp", "vhp"]
