"""The mass matrix: `metric="low_rank"` and `max_rank=`, what `"auto"` picks, a given
`inverse_mass_matrix=` kept as given, the adapted metric on the result, in the log
lines and in checkpoints."""

import logging
import re

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from blackjax.mcmc.metrics import LowRankInverseMassMatrix
from conftest import tree_equal
from jaxtyping import Array, Float

import eqbayes as eb
from eqbayes import _bayesian


# A correlated 4-d Gaussian: a strongly correlated pair and two independent
# components of very different scales.
MEAN = np.array([1.0, -2.0, 0.5, 3.0])
COV = np.array(
    [
        [1.0, 0.95, 0.0, 0.0],
        [0.95, 1.0, 0.0, 0.0],
        [0.0, 0.0, 4.0, 0.0],
        [0.0, 0.0, 0.0, 0.01],
    ]
)
PRECISION = np.linalg.inv(COV)


class Vector(eqx.Module):
    x: Float[Array, " d"]


def gaussian_loss(model: Vector) -> Float[Array, ""]:
    z = model.x - jnp.asarray(MEAN, model.x.dtype)
    return 0.5 * z @ jnp.asarray(PRECISION, z.dtype) @ z


def _flat_prior(position: Vector) -> Float[Array, ""]:
    return jnp.zeros((), position.x.dtype)


def _marked(kernel=blackjax.nuts, d=4, **kwargs):
    settings = dict(
        num_chains=4, warmup=300, keep=500, init_jitter=0.5, prior=_flat_prior
    )
    settings.update(kwargs)
    return eb.bayesian(Vector(jnp.zeros(d)), kernel, **settings)


def _run(model, key=0):
    return eb.Solver(gaussian_loss, progress=False).run(model, key=jr.key(key))


def _check_gaussian(draws):
    """Every mean and covariance entry within 4 MCSE of the truth (the MCSE of the
    mean of x_i, and of the products (x_i - m_i)(x_j - m_j))."""
    draws = jnp.asarray(draws)
    mcse = eb.diagnostics.mcse_mean
    mean = np.asarray(jnp.mean(draws, axis=(0, 1)))
    z = np.abs(mean - MEAN) / np.asarray(mcse(draws))  # numpy: (4,) with (4,)
    assert np.all(z < 4), (mean, z)
    centred = draws - jnp.asarray(MEAN, draws.dtype)[None, None, :]
    products = centred[..., :, None] * centred[..., None, :]
    cov = np.asarray(jnp.mean(products, axis=(0, 1)))
    z = np.abs(cov - COV) / np.asarray(mcse(products))
    assert np.all(z < 4), (cov, z)


@pytest.mark.parametrize("adapt", [True, "pooled"])
def test_low_rank_recovers_a_correlated_gaussian(adapt):
    """`metric="low_rank"`: per chain and pooled, the draws match the Gaussian's
    mean and covariance, and the adapted metric (read off the result as blackjax's
    `LowRankInverseMassMatrix`) is close to its covariance."""
    result = _run(_marked(metric="low_rank", max_rank=2, adapt=adapt))
    _check_gaussian(result.posterior.samples.x)
    diagnostics = result.posterior.diagnostics["Vector"]
    imm = diagnostics.inverse_mass_matrix
    assert isinstance(imm, LowRankInverseMassMatrix)
    assert (imm.sigma.shape, imm.U.shape, imm.lam.shape) == ((4, 4), (4, 4, 2), (4, 2))
    if adapt == "pooled":
        assert tree_equal(
            jax.tree.map(lambda x: x[0], imm), jax.tree.map(lambda x: x[3], imm)
        )
    dense = np.asarray(diagnostics.dense_inverse_mass_matrix())
    ratio = np.diagonal(dense, axis1=1, axis2=2) / np.diag(COV)
    assert np.all((ratio > 0.5) & (ratio < 2)), ratio
    # The strongly correlated pair is one of the rescaled directions.
    correlation = dense[:, 0, 1] / np.sqrt(dense[:, 0, 0] * dense[:, 1, 1])
    assert np.all(correlation > 0.8), correlation


def test_auto_picks_by_dimension(caplog):
    """`metric="auto"`: dense up to `AUTO_DENSE_MAX_DIM` components (and the draws
    are exact), low-rank above; the kind is in the init and end log lines."""
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        result = _run(_marked())
    assert "window adaptation per chain, dense metric" in caplog.text
    assert "dense inverse mass matrix, diagonal entries" in caplog.text
    assert result.posterior.diagnostics["Vector"].inverse_mass_matrix.shape == (4, 4, 4)
    _check_gaussian(result.posterior.samples.x)
    big = _bayesian.AUTO_DENSE_MAX_DIM + 1
    (leaf,) = [
        g
        for g in jax.tree.leaves(
            _marked(d=big), is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
        if isinstance(g, eb.BayesianLeaf)
    ]
    assert leaf.config.metric == "low_rank"
    assert leaf.config.max_rank == _bayesian.DEFAULT_MAX_RANK
    huge = _bayesian.AUTO_LOW_RANK_MAX_DIM + 1
    (leaf,) = [
        g
        for g in jax.tree.leaves(
            _marked(d=huge), is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
        if isinstance(g, eb.BayesianLeaf)
    ]
    assert leaf.config.metric == "diag"
    # Nothing adapts the metric: the identity diagonal.
    fixed = _marked(adapt=False, step_size=0.1)
    (leaf,) = [
        g
        for g in jax.tree.leaves(
            fixed, is_leaf=lambda x: isinstance(x, eb.BayesianLeaf)
        )
        if isinstance(g, eb.BayesianLeaf)
    ]
    assert leaf.config.metric == "diag"


def test_low_rank_log_lines(caplog):
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        _run(_marked(metric="low_rank", max_rank=3, warmup=60, keep=10))
    assert "low-rank (diagonal + rank 3) metric" in caplog.text
    assert "low-rank inverse mass matrix (rank 3), sigma²" in caplog.text


@pytest.mark.parametrize("metric", ["auto", "diag", "dense"])
def test_given_inverse_mass_matrix_is_kept(metric, caplog):
    """A given `inverse_mass_matrix=` is used as given: the window adaptation tunes
    the step size only (each chain its own)."""
    given = jnp.array([0.5, 0.25, 2.0, 0.02])
    if metric == "dense":
        given = jnp.diag(given)
    kwargs = {} if metric == "auto" else {"metric": metric}
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        result = _run(_marked(inverse_mass_matrix=given, **kwargs))
    assert "(given, kept)" in caplog.text
    diagnostics = result.posterior.diagnostics["Vector"]
    np.testing.assert_array_equal(
        diagnostics.inverse_mass_matrix, jnp.broadcast_to(given, (4, *given.shape))
    )
    assert len(np.unique(np.asarray(diagnostics.step_size))) == 4
    _check_gaussian(result.posterior.samples.x)


def test_given_low_rank_matrix_is_kept():
    given = LowRankInverseMassMatrix(
        jnp.sqrt(jnp.asarray(np.diag(COV))),
        jnp.asarray([[1.0, 1.0, 0.0, 0.0]]).T / jnp.sqrt(2.0),
        jnp.array([1.95]),
    )
    result = _run(_marked(inverse_mass_matrix=given, warmup=100, keep=10))
    imm = result.posterior.diagnostics["Vector"].inverse_mass_matrix
    assert isinstance(imm, LowRankInverseMassMatrix)
    assert tree_equal(jax.tree.map(lambda x: x[2], imm), given)


def test_low_rank_resumes_bitwise(tmp_path):
    """The low-rank adaptation's window (draws and gradients so far) is part of
    the saved state: a solve saved in a slow window continues with the same bits."""
    model = _marked(metric="low_rank", max_rank=2, warmup=100, keep=20)
    solver = eb.Solver(gaussian_loss, progress=False)
    state = solver.init(model, key=jr.key(1))
    like = solver.init(model, key=jr.key(2))
    for _ in range(40):
        state = solver.step(state)
    eb.save(tmp_path / "state.eqx", state)
    resumed = solver.run(
        model, key=jr.key(1), state=eb.load(tmp_path / "state.eqx", like=like)
    )
    full = solver.run(model, key=jr.key(1))
    assert tree_equal(resumed.posterior.samples, full.posterior.samples)
    assert tree_equal(resumed.posterior.diagnostics, full.posterior.diagnostics)


def _named(template: str, **values) -> str:
    return re.escape(template.format(name="Vector", **values))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(metric="full"), _named(_bayesian._METRIC_CHOICE, value="full")),
        (
            dict(metric="diag", max_rank=4),
            _named(_bayesian._MAX_RANK_METRIC, value="diag", rank=4),
        ),
        (
            dict(max_rank=4),
            _named(_bayesian._MAX_RANK_METRIC, value="auto", rank=4),
        ),
        (dict(metric="low_rank", max_rank=0), _named(_bayesian._MAX_RANK, value=0)),
        (
            dict(metric="low_rank", max_rank=True),
            _named(_bayesian._MAX_RANK, value=True),
        ),
        (
            dict(kernel=blackjax.mala, step_size=0.1, metric="low_rank"),
            _named(_bayesian._METRIC_KERNEL, kernel="mala", value="low_rank"),
        ),
        (
            dict(metric="low_rank", inverse_mass_matrix=jnp.ones(4)),
            _named(_bayesian._METRIC_IMM, value="low_rank", given="diag"),
        ),
        (
            dict(
                metric="low_rank",
                max_rank=3,
                inverse_mass_matrix=LowRankInverseMassMatrix(
                    jnp.ones(4), jnp.zeros((4, 2)), jnp.ones(2)
                ),
            ),
            _named(_bayesian._MAX_RANK_GIVEN, value=3, rank=2),
        ),
        (
            dict(kernel=blackjax.hmc, adapt="chees", metric="low_rank"),
            "ChEES-HMC works with a diagonal metric only.",
        ),
    ],
)
def test_bad_metric_settings_are_named(kwargs, match):
    kernel = kwargs.pop("kernel", blackjax.nuts)
    with pytest.raises(ValueError, match=match):
        _marked(kernel, **kwargs)


def test_low_rank_factors_of_the_wrong_shape():
    given = LowRankInverseMassMatrix(jnp.ones(4), jnp.zeros((3, 1)), jnp.ones(1))
    model = _marked(inverse_mass_matrix=given)
    shapes = ((4,), (3, 1), (1,))
    match = _named(_bayesian._IMM_LOW_RANK_SHAPE, d=4, r=1, shapes=shapes)
    with pytest.raises(ValueError, match=match):
        eb.Solver(gaussian_loss, progress=False).init(model, key=jr.key(0))
