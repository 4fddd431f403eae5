"""eqbayes: Bayesian parts for ordinary Equinox models.

Mark a sub-tree of an `eqx.Module` with `eb.bayesian(...)` (or fit it with
`eb.vi(...)`), run `eb.Solver(loss)`, and read the posterior chain, its diagnostics
and predictive bands off the result.
"""

import importlib.metadata

from . import (
    callbacks as callbacks,
    constraints as constraints,
    diagnostics as diagnostics,
    initializers as initializers,
    nn as nn,
    plot as plot,
    priors as priors,
    testing as testing,
)
from ._bayesian import bayesian as bayesian, BayesianLeaf as BayesianLeaf
from ._checkpoint import load as load, save as save
from ._groups import (
    AbstractChainGroup as AbstractChainGroup,
    AbstractGroup as AbstractGroup,
    AbstractStagedGroup as AbstractStagedGroup,
    Context as Context,
    Draws as Draws,
    GroupResult as GroupResult,
    Mode as Mode,
    Solve as Solve,
)
from ._laplace import (
    laplace as laplace,
    LaplaceGaussian as LaplaceGaussian,
    LaplaceGroup as LaplaceGroup,
)
from ._marking import mark as mark, MaskedGroup as MaskedGroup, unwrap as unwrap
from ._mcmc import KernelDiagnostics as KernelDiagnostics
from ._optax import OptaxGroup as OptaxGroup, optimise as optimise
from ._posterior import History as History, Posterior as Posterior, Result as Result
from ._sample_prior import sample_prior as sample_prior
from ._smc import smc as smc, SMCDiagnostics as SMCDiagnostics, SMCGroup as SMCGroup
from ._solver import Solver as Solver, SolverState as SolverState, Substep as Substep
from ._summary import Summary as Summary
from ._vi import (
    AbstractGaussianApproximation as AbstractGaussianApproximation,
    FullRankGaussian as FullRankGaussian,
    MeanFieldGaussian as MeanFieldGaussian,
    vi as vi,
    VIGroup as VIGroup,
)
from .diagnostics import ess as ess, rhat as rhat


try:
    __version__ = importlib.metadata.version("eqbayes")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover
    __version__ = "0.0.0"
