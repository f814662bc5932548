"""The exceptions raised for invalid values, shared by every public function."""


class HVPError(ValueError, RuntimeError):
    """An invalid value was given to a jaxhvp function.

    It is both a ``ValueError`` (the Python convention) and a ``RuntimeError`` (what
    ``torch.autograd.functional`` raises), so code ported from PyTorch that catches
    ``RuntimeError`` keeps working. Wrong *types* raise ``TypeError`` instead. Where torch
    raises a narrower class, the error is also an instance of it (see the subclasses below).
    """


HVPError.__module__ = "jaxhvp"  # its public name, shown in tracebacks


class StrategyError(HVPError, AssertionError):
    """An unknown ``outer_jacobian_strategy``: torch's ``hessian`` raises ``AssertionError``."""


class NotSupportedError(HVPError, NotImplementedError):
    """A combination of ``hessian`` options torch has not implemented (``NotImplementedError``)."""
