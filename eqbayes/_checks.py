"""Validators of user settings, each with its message.

Every check raises before anything is compiled, with a sentence that quotes the
call, names the group and says the fix.
"""

import math
import numbers
from typing import Any

from . import priors as _priors


_INT_ARG = (
    "`eb.{fn}(..., {arg}={value!r})` for group '{name}': `{arg}` must be an "
    "integer {bound}; got {value!r} of type `{type}`. {fix}"
)
_FLOAT_ARG = (
    "`eb.{fn}(..., {arg}={value!r})` for group '{name}': `{arg}` must be a "
    "finite number {bound}; got {value!r} of type `{type}`. {fix}"
)
_PRIOR = (
    "`eb.{fn}(..., prior={prior!r})` for group '{name}': a prior must be a "
    "hashable callable `position -> scalar log density` (a function, or an "
    "`eqx.Module` whose fields are Python numbers), e.g. `eb.priors.gaussian(1.0)`."
)


def is_count(value: Any, minimum: int = 1) -> bool:
    """Whether `value` is an integer (not a bool) of at least `minimum`."""
    return (
        not isinstance(value, bool)
        and isinstance(value, numbers.Integral)
        and value >= minimum
    )


def count(value: Any, message: str, minimum: int = 1) -> int:
    """`value` as an int if `is_count(value, minimum)`, else `ValueError(message)`."""
    if not is_count(value, minimum):
        raise ValueError(message)
    return int(value)


def check_int(value, arg, name, minimum, fix, fn="bayesian") -> int:
    """A group setting that must be an integer `>= minimum`."""
    message = _INT_ARG.format(
        fn=fn,
        arg=arg,
        value=value,
        name=name,
        bound=f">= {minimum}",
        type=type(value).__name__,
        fix=fix,
    )
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(message)
    return count(value, message, minimum)


def check_float(value, arg, name, *, positive, fix, fn="bayesian") -> float:
    """`value` as a finite float: `> 0` when `positive` is True, `>= 0` when it is
    False, of either sign when it is None."""
    bounds = {True: "> 0", False: ">= 0", None: "(of either sign)"}
    message = _FLOAT_ARG.format(
        fn=fn,
        arg=arg,
        value=value,
        name=name,
        bound=bounds[positive],
        type=type(value).__name__,
        fix=fix,
    )
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise TypeError(message) from None
    if isinstance(value, bool):
        raise TypeError(message)
    if (
        not math.isfinite(x)
        or (positive is not None and x < 0)
        or (positive and x == 0)
    ):
        raise ValueError(message)
    return x


def check_likelihood_scale(value, name, fn="bayesian") -> float:
    return check_float(
        value,
        "likelihood_scale",
        name,
        positive=False,
        fix="For an MSE loss with noise σ over N points use N / (2σ²).",
        fn=fn,
    )


def check_prior(prior, name, fn="bayesian"):
    """The prior, `eb.priors.gaussian(10.0)` when None; a clear error unless it is
    a hashable callable."""
    the_prior = _priors.gaussian(10.0) if prior is None else prior
    try:
        hash(the_prior)
        callable_prior = callable(the_prior)
    except TypeError:
        callable_prior = False
    if not callable_prior:
        raise TypeError(_PRIOR.format(fn=fn, prior=the_prior, name=name))
    return the_prior
