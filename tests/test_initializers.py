"""Log-density-aware initializers: warm starts, the behaviour matrix, the protocol."""

import logging
import re

import blackjax
import equinox as eqx
import jax
import jax.flatten_util
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from problems import Coefficients, exact_posterior, LIKELIHOOD_SCALE, mse, sincos_data

import eqbayes as eb


DATA = sincos_data()
MEAN, COV = exact_posterior(*DATA)
SD = np.sqrt(np.diag(COV))
FAR = Coefficients(jnp.array(50.0), jnp.array(50.0))

INITIALIZERS = {
    "pathfinder": eb.initializers.pathfinder(),
    "laplace": eb.initializers.laplace(),
    "svgd": eb.initializers.svgd(),
}


def _far(**kwargs):
    """NUTS from a = b = 50 with no adaptation and no warmup."""
    settings = dict(adapt=False, warmup=0, likelihood_scale=LIKELIHOOD_SCALE)
    return eb.bayesian(FAR, blackjax.nuts, **(settings | kwargs))


def _init(model, data=DATA, key=jr.key(0)):
    return eb.Solver(mse, progress=False).init(model, key=key, args=data)


def _run(model, data=DATA, key=jr.key(0)):
    return eb.Solver(mse, progress=False).run(model, key=key, args=data)


def _z(draws):
    """(a, b) draws `(..., 2)` in posterior sds from the exact mean."""
    return (np.asarray(draws) - MEAN) / SD


@pytest.mark.parametrize("name", [*INITIALIZERS, None])
def test_far_start(name):
    """Started at a = b = 50 (≈ 3500 posterior sds away), NUTS with no adaptation
    and no warmup: each initializer puts the first draw in the bulk, and the chains
    pass a 4-MCSE mean test; without one, the first draw is far away."""
    init = None if name is None else INITIALIZERS[name]
    # Pathfinder and Laplace set a (diagonal) inverse mass matrix ≈ the posterior
    # variances, so the step size is in posterior sds; SVGD and no initializer keep
    # the identity, so it is in the parameters' units (sd ≈ 0.014).
    step_size = 0.5 if name in ("pathfinder", "laplace") else 0.01
    model = _far(
        keep=500,
        num_chains=4,
        step_size=step_size,
        init=init,
    )
    samples = _run(model).posterior.samples
    first = _z(jnp.stack([samples.a[:, 0], samples.b[:, 0]], axis=-1))
    if name is None:
        assert np.all(np.abs(first) > 100), first
        return
    assert np.all(np.abs(first) < 6), first
    # The four chains start at four distinct points.
    assert len(set(np.asarray(samples.a[:, 0]).tolist())) == 4
    for i, draws in enumerate((samples.a, samples.b)):
        ess = float(eb.ess(draws))
        mcse = SD[i] / np.sqrt(ess)
        err = abs(float(jnp.mean(draws)) - MEAN[i])
        assert err < 4 * mcse, (name, i, err, mcse, ess)


@pytest.mark.parametrize("num_chains", [1, 3])
def test_laplace_is_exact_on_a_gaussian_posterior(num_chains):
    """The diagonal Laplace inverse mass matrix is the posterior variances (the
    problem is uncorrelated); one chain starts at the posterior mean (the MAP)."""
    model = _far(
        step_size=0.5,
        num_chains=num_chains,
        init=eb.initializers.laplace(),
    )
    state = _init(model).model.state
    assert abs(COV[0, 1]) / np.sqrt(COV[0, 0] * COV[1, 1]) < 1e-3
    imm = np.asarray(state.inverse_mass_matrix)
    assert imm.shape == (2,)
    np.testing.assert_allclose(imm, np.diag(COV), rtol=0.05)
    assert state.step_size == 0.5  # the user's, with adapt=False
    assert state.adaptation is None
    start = state.kernel_state.position
    if num_chains == 1:
        np.testing.assert_allclose(_z([start.a[0], start.b[0]]), 0.0, atol=0.05)
    else:
        assert len(set(np.asarray(start.a).tolist())) == num_chains


@pytest.mark.parametrize("dense_limit", [2048, 0])
def test_full_laplace_on_a_correlated_posterior(dense_limit):
    """`hessian="full"` gives the dense posterior covariance as the inverse mass
    matrix, whether built by `jax.hessian` or one Hessian-vector product at a
    time."""
    data = sincos_data(correlated=True)
    _, cov = exact_posterior(*data)
    model = _far(
        step_size=0.5,
        init=eb.initializers.laplace("full", dense_limit=dense_limit),
    )
    imm = np.asarray(_init(model, data).model.state.inverse_mass_matrix)
    assert imm.shape == (2, 2)
    np.testing.assert_allclose(imm, cov, rtol=0.05)
    diagonal = eb.initializers.laplace("diagonal", dense_limit=dense_limit)
    model = _far(
        step_size=0.5,
        init=diagonal,
    )
    imm = np.asarray(_init(model, data).model.state.inverse_mass_matrix)
    # The diagonal Laplace approximation: 1 / diag(H), the conditional variances.
    np.testing.assert_allclose(imm, 1 / np.diag(np.linalg.inv(cov)), rtol=0.05)


def test_behaviour_matrix_with_adaptation():
    """Initializer + `adapt=True`: window adaptation runs from the warm start, tunes
    the step size and keeps the initializer's inverse mass matrix; with
    `adapt_mass_matrix=True` its slow windows re-estimate it from there; without an
    initializer mass matrix (`mass_matrix=False`, SVGD) it starts from the
    identity."""
    common = dict(warmup=60, keep=5, likelihood_scale=LIKELIHOOD_SCALE)

    laplace = eb.bayesian(FAR, blackjax.nuts, init=eb.initializers.laplace(), **common)
    state = _init(laplace).model.state
    assert state.adaptation is not None
    # Each chain (here one) adapts its own: the tuning has a leading chain axis.
    imm0 = np.asarray(state.inverse_mass_matrix)[0]
    np.testing.assert_allclose(imm0, np.diag(COV), rtol=0.05)
    final = _after_warmup(laplace)
    np.testing.assert_array_equal(final.inverse_mass_matrix[0], imm0)  # kept
    assert float(final.step_size[0]) != 1.0  # tuned
    position = final.kernel_state.position
    assert np.all(np.abs(_z([position.a[0], position.b[0]])) < 6)

    refined = eb.bayesian(
        FAR,
        blackjax.nuts,
        init=eb.initializers.laplace(adapt_mass_matrix=True),
        **common,
    )
    state = _init(refined).model.state
    np.testing.assert_array_equal(
        state.adaptation.imm_state.inverse_mass_matrix[0], imm0
    )
    final = _after_warmup(refined)
    imm = np.asarray(final.inverse_mass_matrix)[0]
    assert not np.array_equal(imm, imm0)  # re-estimated from the warmup draws
    # Stan's regularised estimate from ~45 draws: (n σ² + 5·10⁻³) / (n + 5).
    np.testing.assert_allclose(imm, np.diag(COV), rtol=1.0)
    assert float(final.step_size[0]) != 1.0  # tuned

    for init in (eb.initializers.laplace(mass_matrix=False), eb.initializers.svgd()):
        model = eb.bayesian(FAR, blackjax.nuts, init=init, **common)
        state = _init(model).model.state
        assert state.adaptation is not None
        # The identity, dense: what `metric="auto"` adapts for two components.
        np.testing.assert_array_equal(state.inverse_mass_matrix, np.eye(2)[None])


def _after_warmup(model):
    solver = eb.Solver(mse, progress=False)
    state = solver.init(model, key=jr.key(0), args=DATA)
    for _ in range(model.config.warmup):
        state = solver.step(state, args=DATA)
    return state.model.state


def test_behaviour_matrix_without_adaptation():
    """Initializer + `adapt=False`: its positions and inverse mass matrix, the
    user's step size, no adaptation; the user's inverse mass matrix is replaced."""
    model = eb.bayesian(
        FAR,
        blackjax.hmc,
        adapt=False,
        warmup=10,
        keep=5,
        step_size=0.3,
        num_integration_steps=4,
        inverse_mass_matrix=jnp.array([2.0, 3.0]),
        likelihood_scale=LIKELIHOOD_SCALE,
        init=eb.initializers.laplace(),
    )
    state = _init(model).model.state
    assert state.adaptation is None
    assert state.step_size == 0.3
    np.testing.assert_allclose(state.inverse_mass_matrix, np.diag(COV), rtol=0.05)


class ConstantStart(eb.initializers.AbstractInitializer):
    """A user-written initializer: fixed starting values and kernel settings."""

    a: float = eqx.field(static=True)
    b: float = eqx.field(static=True)
    kernel_kwargs: tuple = eqx.field(static=True, default=())
    chain_axis: bool = eqx.field(static=True, default=True)

    def __call__(self, key, logdensity_fn, position, num_chains):
        logdensity_fn(position)  # callable on the position
        start = Coefficients(
            jnp.asarray(self.a, position.a.dtype), jnp.asarray(self.b, position.b.dtype)
        )
        if num_chains > 1 and self.chain_axis:
            offsets = jnp.arange(num_chains, dtype=position.a.dtype)
            start = jax.tree.map(lambda x: x + 0.01 * offsets, start)
        return start, dict(self.kernel_kwargs)


def test_user_written_initializer_and_dropped_keys(caplog):
    """A subclass of `AbstractInitializer` sets the starts and kernel settings; a
    setting the kernel does not take (an inverse mass matrix for MALA) is dropped
    with a log line, and so is `init_jitter`."""
    init = ConstantStart(
        3.0, -2.7, kernel_kwargs=(("inverse_mass_matrix", (1.0, 2.0)),)
    )
    model = eb.bayesian(
        FAR,
        blackjax.mala,
        warmup=0,
        keep=20,
        num_chains=2,
        init_jitter=0.5,
        step_size=1e-4,
        likelihood_scale=LIKELIHOOD_SCALE,
        init=init,
    )
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        state = _init(model)
    text = caplog.text
    assert "started by the initializer ConstantStart" in text
    assert "init_jitter=0.5 is ignored" in text
    assert "dropped inverse_mass_matrix (the kernel 'mala' does not take it)" in text
    group = state.model
    np.testing.assert_allclose(group.state.kernel_state.position.a, [3.0, 3.01])
    assert group.state.inverse_mass_matrix is None
    assert "inverse_mass_matrix" not in group.arrays
    samples = _run(model).posterior.samples
    assert np.all(np.abs(_z(jnp.stack([samples.a, samples.b], -1))) < 10)

    # A step size from the initializer replaces the user's.
    init = ConstantStart(3.0, -2.7, kernel_kwargs=(("step_size", 0.25),))
    model = _far(
        step_size=0.01,
        init=init,
    )
    assert _init(model).model.state.step_size == 0.25


def test_other_groups_at_their_starting_values():
    """The initializer of group `a` sees `b` at its starting value: Laplace's start
    is the MAP of `a` given `b` there (closed form on the correlated problem)."""
    f1, f2, y = data = sincos_data(correlated=True)
    b0 = 1.0
    model = Coefficients(jnp.array(50.0), jnp.array(b0))
    common = dict(adapt=False, warmup=0, step_size=0.5, keep=5)
    model = eb.bayesian(
        model,
        blackjax.nuts,
        where=lambda m: m.a,
        likelihood_scale=LIKELIHOOD_SCALE,
        init=eb.initializers.laplace(),
        **common,
    )
    model = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.b, step_size=0.01, warmup=0, keep=5
    )
    state = _init(model, data)
    f1, f2, y = (np.asarray(v, np.float64) for v in (f1, f2, y))
    precision = LIKELIHOOD_SCALE * 2 / f1.size * f1 @ f1 + 1 / 100
    a_map = LIKELIHOOD_SCALE * 2 / f1.size * f1 @ (y - b0 * f2) / precision
    start = float(state.model.a.state.kernel_state.position[0])
    assert abs(start - a_map) < 1e-3 / np.sqrt(precision), (start, a_map)


@pytest.mark.parametrize(
    "name",
    [
        "laplace",
        pytest.param("pathfinder", marks=pytest.mark.slow),
        pytest.param("svgd", marks=pytest.mark.slow),
    ],
)
def test_float64(name):
    with jax.enable_x64(True):
        data = sincos_data(dtype=jnp.float64)
        far = Coefficients(jnp.array(50.0, jnp.float64), jnp.array(50.0, jnp.float64))
        model = eb.bayesian(
            far,
            blackjax.nuts,
            adapt=False,
            warmup=0,
            step_size=0.01,
            num_chains=2,
            likelihood_scale=LIKELIHOOD_SCALE,
            init=INITIALIZERS[name],
        )
        state = _init(model, data).model.state
        assert state.kernel_state.position.a.dtype == jnp.float64
        assert state.step_size.dtype == jnp.float64
        assert state.inverse_mass_matrix.dtype == jnp.float64
        position = state.kernel_state.position
        assert np.all(np.abs(_z(jnp.stack([position.a, position.b], -1))) < 6)


# -- bad input ---------------------------------------------------------------------


def test_not_an_initializer():
    for bad in (object(), lambda key, f, p, k: (p, {}), {"a": 1.0}):
        with pytest.raises(
            TypeError,
            match=re.escape(
                "`init` must be a log-density-aware initializer such as "
                "`eb.initializers.pathfinder()`"
            ),
        ):
            eb.bayesian(FAR, blackjax.nuts, init=bad)

    class HoldsAnArray(eb.initializers.AbstractInitializer):
        value: jax.Array

        def __call__(self, key, logdensity_fn, position, num_chains):
            return position, {}

    with pytest.raises(
        TypeError, match=re.escape("the initializer `HoldsAnArray` is not hashable")
    ):
        eb.bayesian(FAR, blackjax.nuts, init=HoldsAnArray(jnp.zeros(2)), name="g")


class Returns(eb.initializers.AbstractInitializer):
    """Returns whatever it is told to, for the error tests."""

    what: str = eqx.field(static=True)

    def __call__(self, key, logdensity_fn, position, num_chains):
        if self.what == "single":
            return position
        if self.what == "update":
            return position, [("inverse_mass_matrix", jnp.ones(2))]
        if self.what == "structure":
            return {"a": position.a, "b": position.b}, {}
        if self.what == "no chain axis":
            return position, {}
        if self.what == "imm":
            stacked = jax.tree.map(lambda x: jnp.stack([x, x]), position)
            return stacked, {"inverse_mass_matrix": jnp.ones(3)}
        raise AssertionError(self.what)


@pytest.mark.parametrize(
    "what, error, match",
    [
        ("single", TypeError, "must return a pair `(position, kernel_kwargs_update)`"),
        ("update", TypeError, "returned a `kernel_kwargs_update` of type `list`"),
        ("structure", ValueError, "returned a position whose structure differs"),
        (
            "no chain axis",
            ValueError,
            "returned a position whose leaf .a has shape () and dtype float32; "
            "with num_chains=2 it must be a floating-point array of shape (2,) "
            "(chain axis first)",
        ),
        ("imm", ValueError, "returned an inverse mass matrix of shape (3,)"),
    ],
)
def test_bad_initializer_output(what, error, match):
    model = eb.bayesian(
        FAR, blackjax.nuts, num_chains=2, name="coefs", init=Returns(what)
    )
    with pytest.raises(error, match=re.escape(match)) as info:
        _init(model)
    assert "`Returns` of group 'coefs'" in str(info.value)


def test_bad_initializer_settings():
    with pytest.raises(ValueError, match=re.escape("`maxiter` must be an integer")):
        eb.initializers.pathfinder(maxiter=0)
    with pytest.raises(ValueError, match=re.escape("`hessian` must be")):
        eb.initializers.laplace("dense")
    with pytest.raises(TypeError, match=re.escape("must be an optax")):
        eb.initializers.laplace(optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape("`learning_rate` must be a")):
        eb.initializers.svgd(learning_rate=-1.0)
    model = eb.bayesian(
        FAR,
        blackjax.nuts,
        num_chains=4,
        init=eb.initializers.svgd(num_particles=2),
    )
    with pytest.raises(
        ValueError, match=re.escape("`num_particles` must be at least `num_chains`")
    ):
        _init(model)


# -- composition with masks, stochastic-gradient kernels and substeps -------------


def _conditional_map_of_a(data, b0):
    """The MAP of `a` with `b` held at `b0` (closed form)."""
    f1, f2, y = (np.asarray(v, np.float64) for v in data)
    precision = LIKELIHOOD_SCALE * 2 / f1.size * f1 @ f1 + 1 / 100
    return LIKELIHOOD_SCALE * 2 / f1.size * f1 @ (y - b0 * f2) / precision, precision


def test_masked_group_sees_only_its_subset():
    """With `mask=`, the initializer's position is the masked subset (here `a`
    only, `b` is None) and the unmasked complement stays at its value: Laplace's
    start is the MAP of `a` given `b` there."""
    data = sincos_data(correlated=True)
    seen = []

    class Spy(eb.initializers.AbstractInitializer):
        def __call__(self, key, logdensity_fn, position, num_chains):
            seen.append(position)
            return eb.initializers.laplace()(key, logdensity_fn, position, num_chains)

    model = eb.bayesian(
        Coefficients(jnp.array(50.0), jnp.array(1.0)),
        blackjax.nuts,
        mask=Coefficients(True, False),
        adapt=False,
        warmup=0,
        step_size=0.5,
        keep=5,
        likelihood_scale=LIKELIHOOD_SCALE,
        init=Spy(),
    )
    state = _init(model, data)
    assert seen[0].b is None and seen[0].a.shape == ()
    a_map, precision = _conditional_map_of_a(data, 1.0)
    start = eb.unwrap(state.model)
    assert abs(float(start.a) - a_map) < 1e-3 / np.sqrt(precision)
    assert float(start.b) == 1.0


def data_mse(model, batch):
    f1, f2, y = batch
    return jnp.mean((model(f1, f2) - y) ** 2)


def test_stochastic_gradient_kernel_gets_the_position_only(caplog):
    """SGLD takes the warm position; the inverse mass matrix is dropped (logged).
    The initializer runs on the full-data log density."""
    model = eb.bayesian(
        FAR,
        blackjax.sgld,
        step_size=1e-7,
        warmup=0,
        keep=5,
        num_chains=2,
        likelihood_scale=LIKELIHOOD_SCALE,
        init=eb.initializers.laplace(),
    )
    solver = eb.Solver(data_mse, progress=False)
    with caplog.at_level(logging.INFO, logger="eqbayes"):
        state = solver.init(model, key=jr.key(0), data=DATA, batch_size=16)
    assert "dropped inverse_mass_matrix (the kernel 'sgld' does not take it)" in (
        caplog.text
    )
    group = state.model
    assert "inverse_mass_matrix" not in group.arrays
    start = group.positions()
    assert np.all(np.abs(_z(jnp.stack([start.a, start.b], -1))) < 6)


def test_initializer_inside_substeps_is_an_error():
    model = eb.bayesian(
        FAR,
        blackjax.nuts,
        where=lambda m: m.a,
        adapt=False,
        step_size=0.1,
        init=eb.initializers.laplace(),
        name="a",
    )
    model = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.b, adapt=False, step_size=0.1, name="b"
    )
    solver = eb.Solver(
        mse, substeps=[eb.Substep(mse, "a"), eb.Substep(mse, "b")], progress=False
    )
    with pytest.raises(
        ValueError,
        match=re.escape(
            "group 'a' has an initializer (`eb.bayesian(..., init=...)`), but an "
            "initializer runs once on the full loss"
        ),
    ):
        solver.init(model, key=jr.key(0), args=DATA)
