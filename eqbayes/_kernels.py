"""Kernel families: detection, (re)building inside the traced step, info capture.

A kernel factory is anything that, called with a log density (or a gradient
estimator) and keyword arguments, returns a `blackjax.SamplingAlgorithm`. Its
*family* is read from the name of its first parameter:

- `logdensity_fn`: full-data MCMC (`blackjax.nuts`, `blackjax.hmc`, `blackjax.mala`,
  user factories);
- `grad_estimator`: stochastic-gradient MCMC (`blackjax.sgld`, `blackjax.sghmc`).

Blackjax's top-level kernels are `GenerateSamplingAPI` objects whose own signature
is `(*args, **kwargs)`, so their `.differentiable` function is inspected instead.
"""

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import blackjax
import equinox as eqx
import jax.numpy as jnp
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from jaxtyping import Array


FULL_DATA = "full-data"
STOCHASTIC_GRADIENT = "stochastic-gradient"

#: The per-step fields eqbayes records when a kernel's info carries them.
DIAGNOSTIC_FIELDS = (
    "is_divergent",
    "acceptance_rate",
    "energy",
    "num_integration_steps",
)

_NOT_CALLABLE = (
    "`eb.bayesian(..., kernel={kernel!r})` for group '{name}': the kernel must be a "
    "blackjax kernel factory such as `blackjax.nuts`, or a function "
    "`(logdensity_fn, **kwargs) -> blackjax.SamplingAlgorithm`; got an object of type "
    "`{type}`."
)
_VI_KERNEL = (
    "`eb.bayesian(..., kernel={kernel_name})` for group '{name}': this is a "
    "variational family, not an MCMC kernel. Variational fits are made with "
    "`eb.vi(...)`."
)
_UNKNOWN_FAMILY = (
    "`eb.bayesian(..., kernel={kernel_name})` for group '{name}': cannot tell the "
    "kernel family. The first parameter of the factory must be named `logdensity_fn` "
    "(full-data MCMC) or `grad_estimator` (stochastic-gradient MCMC); this one's "
    "parameters are {params}. Rename the first parameter of your factory, e.g. "
    "`def my_kernel(logdensity_fn, step_size): ...`."
)
_UNKNOWN_KWARG = (
    "`eb.bayesian(..., kernel={kernel_name}, {kwarg}=...)` for group '{name}': the "
    "kernel does not take `{kwarg}`. It accepts {params}."
)
_KWARG_UNHASHABLE = (
    "`eb.{fn}(..., {kwarg}=...)` for group '{name}': kernel keyword arguments "
    "must be arrays or hashable values (numbers, strings, functions); got a value "
    "of type `{type}`."
)
_MISSING_KWARG = (
    "`eb.bayesian(..., kernel={kernel_name})` for group '{name}': the kernel needs "
    "`{kwarg}=`, e.g. `eb.bayesian(..., kernel={kernel_name}, {kwarg}=...)`."
)
_BAD_STATE = (
    "The state returned by `{kernel_name}.init` for group '{name}' has no position: "
    "eqbayes reads it from a `.position` field (blackjax states) or a `'position'` "
    "key (dict states). Got a state of type `{type}`."
)


@dataclasses.dataclass(frozen=True, eq=False)
class KernelSpec:
    """A kernel factory with what eqbayes reads from its signature.

    Hashes and compares by the identity of the factory (blackjax's factories are
    unhashable dataclasses), so that it can live in static configuration.
    """

    factory: Callable[..., Any]
    name: str
    family: str
    parameters: tuple[str, ...]
    required: tuple[str, ...]
    var_keyword: bool

    def __hash__(self) -> int:
        return hash(id(self.factory))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KernelSpec) and other.factory is self.factory

    @property
    def is_hmc_family(self) -> bool:
        """Kernels that take both a step size and an inverse mass matrix."""
        return "step_size" in self.parameters and (
            "inverse_mass_matrix" in self.parameters
        )

    @property
    def is_stochastic_gradient(self) -> bool:
        """Kernels built from a gradient estimator (SGLD, SGHMC, SGNHT)."""
        return self.family == STOCHASTIC_GRADIENT

    @property
    def takes_step_size(self) -> bool:
        """Whether the kernel needs a step size (a factory keyword for full-data
        kernels; an argument of every step for stochastic-gradient ones)."""
        return self.is_stochastic_gradient or "step_size" in self.parameters

    def accepts(self, kwarg: str) -> bool:
        return self.var_keyword or kwarg in self.parameters

    def build(self, logdensity_fn: Callable, **kwargs: Any) -> Any:
        """Builds the `SamplingAlgorithm`, dropping keywords it does not take."""
        kwargs = {k: v for k, v in kwargs.items() if self.accepts(k)}
        return self.factory(logdensity_fn, **kwargs)

    def step_keywords(self, **kwargs: Any) -> tuple[str, ...]:
        """The optional keywords of a stochastic-gradient kernel's `step` after
        `(rng_key, state, minibatch, step_size)`, e.g. `temperature`."""
        algorithm = self.build(lambda position, minibatch: position, **kwargs)
        try:
            params = list(inspect.signature(algorithm.step).parameters)
        except (TypeError, ValueError):
            return ()
        return tuple(params[4:])


def _kernel_name(factory: Any) -> str:
    if isinstance(factory, blackjax.GenerateSamplingAPI):
        return factory.differentiable.__module__.rsplit(".", 1)[-1]
    return getattr(factory, "__name__", type(factory).__name__)


def kernel_spec(factory: Any, group_name: str) -> KernelSpec:
    """Detects the family of `factory` and reads its parameters."""
    variational = (blackjax.GenerateVariationalAPI, blackjax.GeneratePathfinderAPI)
    if isinstance(factory, variational):
        raise TypeError(
            _VI_KERNEL.format(kernel_name=_kernel_name(factory), name=group_name)
        )
    if not callable(factory):
        raise TypeError(
            _NOT_CALLABLE.format(
                kernel=factory, name=group_name, type=type(factory).__name__
            )
        )
    target = (
        factory.differentiable
        if isinstance(factory, blackjax.GenerateSamplingAPI)
        else factory
    )
    name = _kernel_name(factory)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    params = [] if signature is None else list(signature.parameters.values())
    first = params[0].name if params else None
    if first == "logdensity_fn":
        family = FULL_DATA
    elif first == "grad_estimator":
        family = STOCHASTIC_GRADIENT
    else:
        raise TypeError(
            _UNKNOWN_FAMILY.format(
                kernel_name=name, name=group_name, params=[p.name for p in params]
            )
        )
    rest = params[1:]
    named = tuple(
        p.name
        for p in rest
        if p.kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )
    required = tuple(
        p.name
        for p in rest
        if p.default is inspect.Parameter.empty
        and p.kind
        not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )
    var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in rest)
    return KernelSpec(factory, name, family, named, required, var_keyword)


def split_kernel_kwargs(
    kwargs: Mapping[str, Any], group_name: str, fn: str = "bayesian"
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """`(arrays, static)`: array-valued keywords (traced, so a new value does not
    recompile) and the rest as sorted `(key, value)` pairs, which must be hashable
    (they are part of the compiled program's static configuration)."""
    arrays: dict[str, Any] = {}
    static: list[tuple[str, Any]] = []
    for key, value in sorted(kwargs.items()):
        if isinstance(value, LowRankInverseMassMatrix):
            arrays[key] = LowRankInverseMassMatrix(*map(jnp.asarray, value))
        elif eqx.is_array_like(value) and not isinstance(value, (bool, int, float)):
            arrays[key] = jnp.asarray(value)
        else:
            try:
                hash(value)
            except TypeError:
                raise TypeError(
                    _KWARG_UNHASHABLE.format(
                        fn=fn, kwarg=key, name=group_name, type=type(value).__name__
                    )
                ) from None
            static.append((key, value))
    return arrays, static


def check_kernel_kwargs(
    spec: KernelSpec,
    kwargs: Mapping[str, Any],
    group_name: str,
    supplied: tuple[str, ...] = (),
):
    """Every keyword must be accepted; every required one (bar those eqbayes
    supplies, and `supplied`) must be present."""
    step_keywords: tuple[str, ...] = ()
    if spec.is_stochastic_gradient:
        factory_kwargs = {k: v for k, v in kwargs.items() if spec.accepts(k)}
        step_keywords = ("step_size", *spec.step_keywords(**factory_kwargs))
    for kwarg in kwargs:
        if not spec.accepts(kwarg) and kwarg not in step_keywords:
            raise TypeError(
                _UNKNOWN_KWARG.format(
                    kernel_name=spec.name,
                    kwarg=kwarg,
                    name=group_name,
                    params=", ".join(
                        f"`{p}`" for p in (*spec.parameters, *step_keywords)
                    ),
                )
            )
    supplied = {"step_size", "inverse_mass_matrix", *supplied}
    for kwarg in spec.required:
        if kwarg not in kwargs and kwarg not in supplied:
            raise TypeError(
                _MISSING_KWARG.format(
                    kernel_name=spec.name, kwarg=kwarg, name=group_name
                )
            )


def position_of(state: Any, spec: KernelSpec, group_name: str) -> Any:
    """The chain position held by a kernel state (for SGLD and SGHMC the state
    is the position itself)."""
    fields = getattr(state, "_fields", ()) if isinstance(state, tuple) else ()
    if "position" in fields:
        return getattr(state, "position")
    if isinstance(state, Mapping) and "position" in state:
        return state["position"]
    if spec.is_stochastic_gradient:
        return state
    raise TypeError(
        _BAD_STATE.format(kernel_name=spec.name, name=group_name, type=type(state))
    )


def gradient_of(state: Any) -> Any:
    """The log-density gradient a kernel state caches (blackjax's HMC-family
    states), or None."""
    fields = getattr(state, "_fields", ()) if isinstance(state, tuple) else ()
    return getattr(state, "logdensity_grad") if "logdensity_grad" in fields else None


def info_fields(info: Any) -> dict[str, Array]:
    """The diagnostic fields (of `DIAGNOSTIC_FIELDS`) that a kernel's info carries."""
    if isinstance(info, tuple) and hasattr(info, "_fields"):
        present = {f: getattr(info, f) for f in getattr(info, "_fields")}
    elif isinstance(info, Mapping):
        present = dict(info)
    else:
        present = {}
    return {f: present[f] for f in DIAGNOSTIC_FIELDS if f in present}
