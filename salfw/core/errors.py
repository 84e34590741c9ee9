"""Typed errors and warnings. Every message names what was wrong and what is accepted.

All derive from :class:`SalfwError`, so a caller (and the CLI) can tell a user
mistake from a bug in salfw: the CLI prints a ``SalfwError`` as one line and
exits non-zero; anything else is a bug and keeps its traceback.
"""


class SalfwError(Exception):
    """Base of every error salfw raises on purpose."""


class InputError(SalfwError, ValueError):
    """The input batch is malformed: rank, shape, dtype, range or non-finite values."""


class TargetError(InputError):
    """A target class is out of range or the targets do not match the batch."""


class ParameterError(SalfwError, ValueError):
    """An unknown parameter, or a value of the wrong type or outside its allowed set."""


class UnknownNameError(SalfwError, LookupError):
    """A method, metric, perturbation, model or loader name that is not registered."""

    def __str__(self):  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class ModelError(SalfwError):
    """A model cannot be loaded or called: a missing or malformed file, a bad spec, outputs that
    are not (N, K) class scores, NaN or infinite scores, or NaN or infinite attributions a
    method computed on it."""


class ModelRequirementError(ModelError):
    """The model lacks what a method needs: a white box, ReLU only, no bias, a layer type."""


class PluginError(SalfwError):
    """A plugin failed to load or registered a name another plugin already uses."""


class SalfwWarning(UserWarning):
    """Base of every warning salfw gives on purpose; the CLI prints each as one ``notice:`` line."""


class DegenerateWarning(SalfwWarning):
    """A result that carries (almost) no information, with the parameter that fixes it: too few
    features to explain with, a constant map, a mask the optimisation did not move, or a surrogate
    that explains nothing (R² near 0)."""


class AssumptionWarning(SalfwWarning):
    """A method filled in something only the user can know (training statistics, a baseline)
    with a guess; the message names the parameter that gives it."""
