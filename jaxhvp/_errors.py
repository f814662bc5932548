"""The exception raised for invalid values, shared by every public function."""


class HVPError(ValueError, RuntimeError):
    """An invalid value was given to a jaxhvp function.

    It is both a ``ValueError`` (the Python convention) and a ``RuntimeError`` (what
    ``torch.autograd.functional`` raises), so code ported from PyTorch that catches
    ``RuntimeError`` keeps working. Wrong *types* raise ``TypeError`` instead.
    """
