"""Small problems with known posteriors, shared by the tests."""

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Array, Float


NOISE = 0.1
NUM_POINTS = 101


class Coefficients(eqx.Module):
    a: Float[Array, ""]
    b: Float[Array, ""]

    def __call__(self, f1, f2):
        return self.a * f1 + self.b * f2


def sincos_data(correlated: bool = False, dtype=jnp.float32):
    """The quick-example inverse problem: y = A f1 + B f2 + noise.

    `correlated=False`: f1 = sin(πx), f2 = cos(πx).
    `correlated=True`: f2 = sin(πx) + cos(πx) (posterior correlation ≈ −0.70).
    """
    x = jnp.linspace(0.0, 1.0, NUM_POINTS, dtype=dtype)
    f1 = jnp.sin(jnp.pi * x)
    f2 = jnp.cos(jnp.pi * x) + (f1 if correlated else 0.0)
    noise = NOISE * jr.normal(jr.key(1), x.shape, dtype)
    y = 3.14 * f1 - 2.71 * f2 + noise
    return f1, f2, y


def nearly_collinear_data(dtype=jnp.float32):
    """The quick example with features f1 = sin(πx), f2 = sin(πx) + 0.1 cos(πx):
    y = 3.14 f1 − 2.71 f2 + noise, a posterior correlation of about −0.995."""
    x = jnp.linspace(0.0, 1.0, NUM_POINTS, dtype=dtype)
    f1 = jnp.sin(jnp.pi * x)
    f2 = f1 + 0.1 * jnp.cos(jnp.pi * x)
    noise = NOISE * jr.normal(jr.key(1), x.shape, dtype)
    y = 3.14 * f1 - 2.71 * f2 + noise
    return f1, f2, y


def mse(model, f1, f2, y):
    return jnp.mean((model(f1, f2) - y) ** 2)


#: log p = −(N / 2σ²)·MSE + log prior is the exact Gaussian log-likelihood.
LIKELIHOOD_SCALE = NUM_POINTS / (2 * NOISE**2)
PRIOR_SIGMA = 10.0


def exact_posterior(f1, f2, y):
    """Mean and covariance of (a, b) under a N(0, 10²) prior."""
    X = np.stack([np.asarray(f1), np.asarray(f2)], axis=1).astype(np.float64)
    precision = X.T @ X / NOISE**2 + np.eye(2) / PRIOR_SIGMA**2
    cov = np.linalg.inv(precision)
    mean = cov @ (X.T @ np.asarray(y, np.float64) / NOISE**2)
    return mean, cov


def log_evidence(f1, f2, y):
    """log ∫ exp(−LIKELIHOOD_SCALE · mse) N(a, b; 0, 10²) d(a, b): the normaliser of
    the unnormalised log density eqbayes uses, so the optimal −ELBO of an exact q."""
    X = np.stack([np.asarray(f1), np.asarray(f2)], axis=1).astype(np.float64)
    y = np.asarray(y, np.float64)
    n = y.size
    marginal = NOISE**2 * np.eye(n) + PRIOR_SIGMA**2 * X @ X.T
    _, logdet = np.linalg.slogdet(marginal)
    quad = y @ np.linalg.solve(marginal, y)
    log_normal = -0.5 * (n * np.log(2 * np.pi) + logdet + quad)
    # exp(−‖y − Xθ‖² / 2σ²) is the Gaussian likelihood times (2πσ²)^(n/2).
    return log_normal + 0.5 * n * np.log(2 * np.pi * NOISE**2)


def random_walk(logdensity_fn, step_size):
    """A random-walk Metropolis factory written against blackjax's protocol."""

    def init_fn(position):
        return {"position": position, "logdensity": logdensity_fn(position)}

    def step_fn(rng_key, state):
        key_move, key_accept = jr.split(rng_key)
        leaves, treedef = jax.tree.flatten(state["position"])
        keys = jr.split(key_move, len(leaves))
        moved = [
            x + step_size * jr.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)
        ]
        proposal = jax.tree.unflatten(treedef, moved)
        new_logdensity = logdensity_fn(proposal)
        log_u = jnp.log(jr.uniform(key_accept))
        accept = log_u < new_logdensity - state["logdensity"]
        new_state = {
            "position": jax.tree.map(
                lambda old, new: jnp.where(accept, new, old),
                state["position"],
                proposal,
            ),
            "logdensity": jnp.where(accept, new_logdensity, state["logdensity"]),
        }
        return new_state, {"accepted": accept}

    return blackjax.SamplingAlgorithm(init_fn, step_fn)


def check_moments(draws, mean, sd):
    """Mean within 4 MCSE of the truth; sd within 10 %."""
    import eqbayes as eb

    ess = float(eb.ess(draws))
    got_mean = float(jnp.mean(draws))
    got_sd = float(jnp.std(draws))
    mcse = sd / np.sqrt(ess)
    assert abs(got_mean - mean) < 4 * mcse, (got_mean, mean, mcse, ess)
    assert abs(got_sd / sd - 1) < 0.10, (got_sd, sd)
