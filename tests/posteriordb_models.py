"""Three posteriordb posteriors as Equinox Modules, with their reference posteriors.

Shared by `tests/test_posteriordb.py` and `benchmarks/posteriordb.py`. Each posterior
is a `Posterior` record: a Module of *unconstrained* parameters (`tau > 0` and
`sigma > 0` are moved as `log_tau` / `log_sigma`), its log density (priors exactly as
in the Stan program, flat where the program states none, plus the log-Jacobian of the
log transform), a map from posterior samples to the reference's `unconstrained_names`
order, and the reference itself.

The data live outside the repository, in `<repo>/../shared/data/posteriordb`
(override with the environment variable `EQBAYES_POSTERIORDB`). Build the Modules and
data inside `jax.enable_x64(True)`: every array here is float64.
"""

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.scipy.stats as jss
import numpy as np
from jaxtyping import Array, Float


ENV_VAR = "EQBAYES_POSTERIORDB"

POSTERIOR_NAMES = (
    "eight_schools-eight_schools_noncentered",
    "kidiq-kidscore_momiq",
    "mesquite-logmesquite_logvolume",
)

_MISSING_DIR = (
    "The posteriordb data directory `{path}` does not exist (looked it up {how}). "
    "It must hold `<name>.data.json` and `<name>.reference.json` for {names}. "
    "Point the environment variable `{env}` at the directory that holds them."
)
_MISSING_FILE = (
    "The posteriordb file `{path}` is missing. The directory `{dir}` must hold "
    "`<name>.data.json` and `<name>.reference.json` for {names}; point `{env}` at a "
    "complete copy."
)


def data_dir() -> Path:
    """The posteriordb data directory; raises `FileNotFoundError` when it is missing."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser().resolve()
        how = f"from the environment variable `{ENV_VAR}`"
    else:
        path = Path(__file__).resolve().parents[2] / "shared" / "data" / "posteriordb"
        how = f"relative to the repository, as `{ENV_VAR}` is not set"
    if not path.is_dir():
        raise FileNotFoundError(
            _MISSING_DIR.format(
                path=path, how=how, names=", ".join(POSTERIOR_NAMES), env=ENV_VAR
            )
        )
    return path


def _read_json(name: str, kind: str) -> dict[str, Any]:
    directory = data_dir()
    path = directory / f"{name}.{kind}.json"
    if not path.is_file():
        raise FileNotFoundError(
            _MISSING_FILE.format(
                path=path, dir=directory, names=", ".join(POSTERIOR_NAMES), env=ENV_VAR
            )
        )
    with path.open() as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True)
class Reference:
    """A reference posterior on the unconstrained scale, in `names` order."""

    names: tuple[str, ...]
    mean: np.ndarray
    sd: np.ndarray
    ess_bulk: np.ndarray


def load_reference(name: str) -> Reference:
    """Reads `<name>.reference.json` (unconstrained scale) as float64 numpy arrays."""
    ref = _read_json(name, "reference")
    names = tuple(ref["unconstrained_names"])

    def column(key: str) -> np.ndarray:
        return np.array([ref[key][n] for n in names], dtype=np.float64)

    return Reference(
        names=names,
        mean=column("ref_mean_unconstrained"),
        sd=column("ref_sd_unconstrained"),
        ess_bulk=column("ref_ess_bulk_unconstrained"),
    )


def load_data(name: str) -> dict[str, Array]:
    """Reads `<name>.data.json`; array fields become float64 jax arrays.

    Call inside `jax.enable_x64(True)`. Integer sizes (`N`, `J`) are dropped: the
    arrays carry them.
    """
    raw = _read_json(name, "data")
    return {
        key: jnp.asarray(np.asarray(value, dtype=np.float64))
        for key, value in raw.items()
        if isinstance(value, list)
    }


def _half_cauchy_logpdf(x: Array, scale: float) -> Array:
    # Stan's `x ~ cauchy(0, scale)` with `x > 0`: the Cauchy density on x > 0.
    return jnp.log(2.0) + jss.cauchy.logpdf(x, 0.0, scale)


# --------------------------------------------------------------------------------------
# eight_schools-eight_schools_noncentered
# --------------------------------------------------------------------------------------


class EightSchools(eqx.Module):
    """Non-centred eight schools: `theta = mu + tau * theta_trans`."""

    theta_trans: Float[Array, " J"]
    mu: Float[Array, ""]
    log_tau: Float[Array, ""]


def eight_schools_init(data: dict[str, Array]) -> EightSchools:
    zero = jnp.zeros((), jnp.float64)
    return EightSchools(theta_trans=jnp.zeros_like(data["y"]), mu=zero, log_tau=zero)


def eight_schools_log_density(model: EightSchools, data: dict[str, Array]) -> Array:
    tau = jnp.exp(model.log_tau)
    theta = model.mu + tau * model.theta_trans
    return (
        jnp.sum(jss.norm.logpdf(model.theta_trans, 0.0, 1.0))
        + jnp.sum(jss.norm.logpdf(data["y"], theta, data["sigma"]))
        + jss.norm.logpdf(model.mu, 0.0, 5.0)
        + _half_cauchy_logpdf(tau, 5.0)
        + model.log_tau  # log-Jacobian of tau = exp(log_tau)
    )


def eight_schools_flatten(tree: EightSchools) -> Array:
    return jnp.concatenate(
        [tree.theta_trans, tree.mu[..., None], tree.log_tau[..., None]], axis=-1
    )


# --------------------------------------------------------------------------------------
# Linear regressions: kidiq-kidscore_momiq and mesquite-logmesquite_logvolume
# --------------------------------------------------------------------------------------


class LinearRegression(eqx.Module):
    """`y ~ N(beta[0] + beta[1] * x, sigma)` with `sigma = exp(log_sigma)`."""

    beta: Float[Array, "2"]
    log_sigma: Float[Array, ""]


def linear_regression_init(data: dict[str, Array]) -> LinearRegression:
    del data
    return LinearRegression(
        beta=jnp.zeros(2, jnp.float64), log_sigma=jnp.zeros((), jnp.float64)
    )


def _regression_log_likelihood(
    model: LinearRegression, x: Array, y: Array
) -> tuple[Array, Array]:
    sigma = jnp.exp(model.log_sigma)
    mean = model.beta[0] + model.beta[1] * x
    return jnp.sum(jss.norm.logpdf(y, mean, sigma)), sigma


def kidiq_log_density(model: LinearRegression, data: dict[str, Array]) -> Array:
    loglik, sigma = _regression_log_likelihood(model, data["mom_iq"], data["kid_score"])
    # beta: flat prior; sigma ~ half-Cauchy(0, 2.5); + log-Jacobian of exp.
    return loglik + _half_cauchy_logpdf(sigma, 2.5) + model.log_sigma


def mesquite_log_density(model: LinearRegression, data: dict[str, Array]) -> Array:
    log_weight = jnp.log(data["weight"])
    log_canopy_volume = jnp.log(data["diam1"] * data["diam2"] * data["canopy_height"])
    loglik, _ = _regression_log_likelihood(model, log_canopy_volume, log_weight)
    # beta and sigma: flat priors (on sigma > 0); + log-Jacobian of exp.
    return loglik + model.log_sigma


def linear_regression_flatten(tree: LinearRegression) -> Array:
    return jnp.concatenate([tree.beta, tree.log_sigma[..., None]], axis=-1)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Posterior:
    """One posteriordb posterior.

    - `init(data)`: the Module at the initial point (all unconstrained coordinates 0).
    - `log_density(model, data)`: unconstrained log density (up to a constant).
    - `flatten(tree)`: a Module whose leaves have shape `(*batch, *leaf)` to an array
      `(*batch, d)` in the reference's `unconstrained_names` order.
    """

    name: str
    init: Callable[[dict[str, Array]], eqx.Module]
    log_density: Callable[[Any, dict[str, Array]], Array]
    flatten: Callable[[Any], Array]
    names: tuple[str, ...]


POSTERIORS: dict[str, Posterior] = {
    "eight_schools-eight_schools_noncentered": Posterior(
        name="eight_schools-eight_schools_noncentered",
        init=eight_schools_init,
        log_density=eight_schools_log_density,
        flatten=eight_schools_flatten,
        names=tuple(f"theta_trans[{j}]" for j in range(1, 9)) + ("mu", "log(tau)"),
    ),
    "kidiq-kidscore_momiq": Posterior(
        name="kidiq-kidscore_momiq",
        init=linear_regression_init,
        log_density=kidiq_log_density,
        flatten=linear_regression_flatten,
        names=("beta[1]", "beta[2]", "log(sigma)"),
    ),
    "mesquite-logmesquite_logvolume": Posterior(
        name="mesquite-logmesquite_logvolume",
        init=linear_regression_init,
        log_density=mesquite_log_density,
        flatten=linear_regression_flatten,
        names=("beta[1]", "beta[2]", "log(sigma)"),
    ),
}


def tolerance(ref: Reference, ess: np.ndarray) -> np.ndarray:
    """The posteriordb README's per-coordinate tolerance on |mean - ref mean|."""
    return 4.0 * ref.sd * np.sqrt(1.0 / ess + 1.0 / ref.ess_bulk)


# --------------------------------------------------------------------------------------
# Sampling with eqbayes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Draws:
    """Draws `(K, N, d)` in reference order, with per-coordinate bulk ESS and R-hat."""

    draws: np.ndarray
    ess: np.ndarray
    rhat: np.ndarray
    num_divergent: int
    mean_integration_steps: float
    seconds: float


def sample_eqbayes(
    name: str,
    key: Any,
    *,
    num_chains: int,
    warmup: int,
    keep: int,
    init_jitter: float,
) -> Draws:
    """eqbayes NUTS on posterior `name`, in float64.

    The whole log density (priors included) is the negative loss with
    `likelihood_scale=1`; the eqbayes prior is flat. Chains start at 0 plus
    `init_jitter` times a standard normal draw.
    """
    import time

    import blackjax
    import jax

    import eqbayes as eb

    post = POSTERIORS[name]
    with jax.enable_x64(True):
        data = load_data(name)
        model = eb.bayesian(
            post.init(data),
            blackjax.nuts,
            prior=lambda position: jnp.zeros((), jnp.float64),
            warmup=warmup,
            keep=keep,
            num_chains=num_chains,
            init_jitter=init_jitter,
            name=name,
        )
        solver = eb.Solver(lambda m, d: -post.log_density(m, d), progress=False)
        start = time.perf_counter()
        result = solver.run(model, key=key, args=(data,))
        draws = jax.block_until_ready(post.flatten(result.posterior.samples))
        seconds = time.perf_counter() - start
        info = result.posterior.diagnostics[name]
        return Draws(
            draws=np.asarray(draws),
            ess=np.asarray(eb.ess(draws)),
            rhat=np.asarray(eb.rhat(draws)),
            num_divergent=int(np.sum(info.is_divergent)),
            mean_integration_steps=float(np.mean(info.num_integration_steps)),
            seconds=seconds,
        )
