"""The solve the multi-device checks shard, shared by `sharded_checks.py` and the
multi-process worker (`multihost_worker.py`)."""

import blackjax
import jax.numpy as jnp
from problems import Coefficients, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb


DATA = sincos_data()


def marked(num_chains: int = 16, **kwargs):
    """NUTS with window adaptation and jittered starts: every cross-chain step of
    a solve is exercised (with `adapt="pooled"`, the shared adaptation)."""
    config = dict(
        num_chains=num_chains,
        warmup=40,
        keep=25,
        init_jitter=0.1,
        likelihood_scale=LIKELIHOOD_SCALE,
    )
    config.update(kwargs)
    return eb.bayesian(
        Coefficients(jnp.array(3.0), jnp.array(-2.5)), blackjax.nuts, **config
    )


def solver():
    return eb.Solver(mse, progress=False)
