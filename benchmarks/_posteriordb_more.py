"""Four more posteriordb posteriors (data in the posteriordb data directory, no
reference draws there): arK-arK, earnings-logearn_interaction, garch-garch11 and
gp_pois_regr-gp_pois_regr, ported from their Stan programs.

Each is a flat vector of unconstrained coordinates (`Flat.theta`); the log density
includes the log-Jacobian of Stan's transforms, and the priors the Stan programs
state (flat where they state none). Call inside `jax.enable_x64(True)`.
"""

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.stats as jss
from jaxtyping import Array, Float


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import posteriordb_models as pdb  # noqa: E402


class Flat(eqx.Module):
    """The unconstrained coordinates of a posterior, as one vector."""

    theta: Float[Array, " d"]


def _half_cauchy(x: Array, scale: float) -> Array:
    return jnp.log(2.0) + jss.cauchy.logpdf(x, 0.0, scale)


def _log_sigmoid_jacobian(z: Array) -> Array:
    """log d/dz sigmoid(z)."""
    return jax.nn.log_sigmoid(z) + jax.nn.log_sigmoid(-z)


# arK: y[t] ~ N(alpha + sum_k beta[k] y[t-k], sigma); alpha, beta ~ N(0, 10);
# sigma ~ half-Cauchy(0, 2.5). Coordinates: alpha, beta[1..K], log(sigma).
def ark_dim(data) -> int:
    return 2 + int(data["K"])


def ark_log_density(theta: Array, data) -> Array:
    y, k = data["y"], int(data["K"])
    alpha, beta, log_sigma = theta[0], theta[1 : 1 + k], theta[1 + k]
    sigma = jnp.exp(log_sigma)
    t = y.shape[0]
    lags = jnp.stack([y[k - j - 1 : t - j - 1] for j in range(k)], axis=-1)
    mean = alpha + lags @ beta
    return (
        jnp.sum(jss.norm.logpdf(y[k:], mean, sigma))
        + jss.norm.logpdf(alpha, 0.0, 10.0)
        + jnp.sum(jss.norm.logpdf(beta, 0.0, 10.0))
        + _half_cauchy(sigma, 2.5)
        + log_sigma
    )


# logearn_interaction: log(earn) ~ N(b1 + b2 height + b3 male + b4 height male,
# sigma); flat priors. Coordinates: beta[1..4], log(sigma).
def earnings_dim(data) -> int:
    del data
    return 5


def earnings_log_density(theta: Array, data) -> Array:
    log_earn = jnp.log(data["earn"])
    height, male = data["height"], data["male"]
    beta, log_sigma = theta[:4], theta[4]
    mean = beta[0] + beta[1] * height + beta[2] * male + beta[3] * height * male
    return jnp.sum(jss.norm.logpdf(log_earn, mean, jnp.exp(log_sigma))) + log_sigma


# garch11: sigma[1] = sigma1, sigma[t]² = alpha0 + alpha1 (y[t-1] - mu)² +
# beta1 sigma[t-1]²; y ~ N(mu, sigma); flat priors on mu, alpha0 > 0,
# 0 < alpha1 < 1, 0 < beta1 < 1 - alpha1. Coordinates: mu, log(alpha0),
# logit(alpha1), logit(beta1 / (1 - alpha1)).
def garch_dim(data) -> int:
    del data
    return 4


def garch_log_density(theta: Array, data) -> Array:
    y, sigma1 = data["y"], data["sigma1"]
    mu, log_alpha0, z1, z2 = theta[0], theta[1], theta[2], theta[3]
    alpha0 = jnp.exp(log_alpha0)
    alpha1 = jax.nn.sigmoid(z1)
    beta1 = (1 - alpha1) * jax.nn.sigmoid(z2)

    def step(sigma_prev, y_prev):
        sigma = jnp.sqrt(alpha0 + alpha1 * (y_prev - mu) ** 2 + beta1 * sigma_prev**2)
        return sigma, sigma

    _, rest = jax.lax.scan(step, jnp.asarray(sigma1, y.dtype), y[:-1])
    sigma = jnp.concatenate([jnp.reshape(sigma1, (1,)).astype(y.dtype), rest])
    return (
        jnp.sum(jss.norm.logpdf(y, mu, sigma))
        + log_alpha0
        + _log_sigmoid_jacobian(z1)
        + jnp.log1p(-alpha1)
        + _log_sigmoid_jacobian(z2)
    )


# gp_pois_regr: f = L f_tilde, L L' = alpha² exp(-(x - x')² / (2 rho²)) + 1e-10 I;
# k ~ Poisson(exp(f)); rho ~ Gamma(25, 4); alpha ~ half-N(0, 2); f_tilde ~ N(0, 1).
# Coordinates: log(rho), log(alpha), f_tilde[1..N].
def gp_dim(data) -> int:
    return 2 + data["x"].shape[0]


def gp_log_density(theta: Array, data) -> Array:
    x, k = data["x"], data["k"]
    log_rho, log_alpha, f_tilde = theta[0], theta[1], theta[2:]
    rho, alpha = jnp.exp(log_rho), jnp.exp(log_alpha)
    diff = x[:, None] - x[None, :]
    cov = alpha**2 * jnp.exp(-(diff**2) / (2 * rho**2))
    cov = cov + 1e-10 * jnp.eye(x.shape[0], dtype=x.dtype)
    f = jnp.linalg.cholesky(cov) @ f_tilde
    return (
        jnp.sum(k * f - jnp.exp(f) - jax.scipy.special.gammaln(k + 1))
        + jss.gamma.logpdf(rho, 25.0, scale=1 / 4.0)
        + jnp.log(2.0)
        + jss.norm.logpdf(alpha, 0.0, 2.0)
        + jnp.sum(jss.norm.logpdf(f_tilde, 0.0, 1.0))
        + log_rho
        + log_alpha
    )


MORE = {
    "arK-arK": (ark_dim, ark_log_density),
    "earnings-logearn_interaction": (earnings_dim, earnings_log_density),
    "garch-garch11": (garch_dim, garch_log_density),
    "gp_pois_regr-gp_pois_regr": (gp_dim, gp_log_density),
}


def load_data(name: str) -> dict[str, Array]:
    """The data of posterior `name` (sizes such as `K` kept as numbers)."""
    raw = pdb._read_json(name, "data")
    return {
        key: jnp.asarray(value, jnp.float64) if isinstance(value, list) else value
        for key, value in raw.items()
    }
