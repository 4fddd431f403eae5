"""Every misconfiguration is a clear eqbayes error before anything is compiled."""

import re

import blackjax
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import optax
import pytest
from problems import Coefficients, mse, sincos_data

import eqbayes as eb
from eqbayes._solver import _as_key


DATA = sincos_data()
MODEL = Coefficients(jnp.array(3.0), jnp.array(-2.5))


def _solve(model, loss=mse, **kwargs):
    return eb.Solver(loss, progress=False).init(
        model, key=jr.key(0), args=DATA, **kwargs
    )


@pytest.mark.parametrize(
    "kwargs, why",
    [
        (dict(kernel=blackjax.mala), "`mala` has no step-size adaptation"),
        (dict(kernel=blackjax.nuts, adapt=False), "with `adapt=False` nothing tunes"),
        (dict(kernel=blackjax.nuts, warmup=0), "with `warmup=0` there are no steps"),
    ],
)
def test_missing_step_size(kwargs, why):
    kernel = kwargs.pop("kernel")
    with pytest.raises(ValueError, match=re.escape(why)):
        eb.bayesian(MODEL, kernel, **kwargs)
    name = kernel.differentiable.__module__.rsplit(".", 1)[-1]
    with pytest.raises(
        ValueError,
        match=re.escape(f"`eb.bayesian(..., kernel={name})` for group 'Coefficients' "),
    ):
        eb.bayesian(MODEL, kernel, **kwargs)


def test_unknown_kernel_family():
    def not_a_kernel(x, step_size):
        pass

    with pytest.raises(TypeError, match=re.escape("cannot tell the kernel family")):
        eb.bayesian(MODEL, not_a_kernel, step_size=0.1)
    with pytest.raises(TypeError, match=re.escape("this is a variational family")):
        eb.bayesian(MODEL, blackjax.meanfield_vi)


def test_stochastic_gradient_kernel_options():
    with pytest.raises(
        ValueError,
        match=re.escape("stochastic-gradient kernels take a step size at every step"),
    ):
        eb.bayesian(MODEL, blackjax.sgld)
    with pytest.raises(
        TypeError, match=re.escape("It accepts `step_size`, `temperature`")
    ):
        eb.bayesian(MODEL, blackjax.sgld, step_size=1e-4, friction=0.1)
    eb.bayesian(MODEL, blackjax.sgld, step_size=1e-4, temperature=0.5)
    eb.bayesian(MODEL, blackjax.sghmc, step_size=1e-4, num_integration_steps=5)


def test_mismatched_num_chains():
    model = eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.a, num_chains=2)
    model = eb.bayesian(model, blackjax.nuts, where=lambda m: m.b, num_chains=3)
    with pytest.raises(
        ValueError, match=re.escape("'a' has num_chains=2, 'b' has num_chains=3")
    ):
        _solve(model)


@pytest.mark.parametrize(
    "kwargs, match, error",
    [
        (dict(keep=0), "`keep` must be an integer >= 1", ValueError),
        (dict(thin=0), "`thin` must be an integer >= 1", ValueError),
        (dict(warmup=-1), "`warmup` must be an integer >= 0", ValueError),
        (dict(num_chains=0), "`num_chains` must be an integer >= 1", ValueError),
        (
            dict(step_size=-0.1),
            "the step size must be a positive finite number",
            ValueError,
        ),
        (dict(step_size=float("nan")), "positive finite number", ValueError),
        (
            dict(init_jitter=-1.0),
            "`init_jitter` must be a finite number >= 0",
            ValueError,
        ),
        (
            dict(likelihood_scale=-1.0),
            "`likelihood_scale` must be a finite number",
            ValueError,
        ),
        (
            dict(num_integration_steps=3),
            "the kernel does not take `num_integration_steps`",
            TypeError,
        ),
        (
            dict(max_num_doublings=[1]),
            "kernel keyword arguments must be arrays or hashable",
            TypeError,
        ),
    ],
)
def test_bad_arguments(kwargs, match, error):
    with pytest.raises(error, match=re.escape(match)):
        eb.bayesian(MODEL, blackjax.nuts, **kwargs)


def test_unhashable_prior():
    class ArrayPrior(eqx.Module):
        scale: jnp.ndarray

        def __call__(self, position):
            return -jnp.sum(jnp.abs(position.a)) / self.scale

    with pytest.raises(TypeError, match=re.escape("a prior must be a hashable")):
        eb.bayesian(MODEL, blackjax.nuts, prior=ArrayPrior(jnp.array(1.0)))


def test_adaptation_needs_acceptance_rate():
    from problems import random_walk

    def hmc_like(logdensity_fn, step_size, inverse_mass_matrix):
        return random_walk(logdensity_fn, step_size)

    model = eb.bayesian(MODEL, hmc_like, warmup=10, keep=5)
    with pytest.raises(
        ValueError, match=re.escape("this kernel's info has no `acceptance_rate`")
    ):
        _solve(model)


def test_missing_required_kernel_argument():
    with pytest.raises(
        TypeError, match=re.escape("the kernel needs `num_integration_steps=`")
    ):
        eb.bayesian(MODEL, blackjax.hmc)


def test_student_t_df():
    with pytest.raises(ValueError, match=re.escape("`df` must be > 2")):
        eb.priors.student_t(df=2.0)


def test_loss_not_scalar():
    model = eb.bayesian(MODEL, blackjax.nuts)

    def vector_loss(model, f1, f2, y):
        return (model(f1, f2) - y) ** 2

    with pytest.raises(
        ValueError,
        match=re.escape(
            "the loss must return a scalar, but `loss(model, *args)` "
            "returned an array of shape (101,)"
        ),
    ):
        _solve(model, loss=vector_loss)


def test_where_selects_no_inexact_array():
    class WithCount(eqx.Module):
        weight: jnp.ndarray
        count: jnp.ndarray

    model = WithCount(jnp.ones(3), jnp.array(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "for group 'count': the selected sub-tree has no "
            "floating-point array leaves"
        ),
    ):
        eb.bayesian(model, blackjax.nuts, where=lambda m: m.count)


def test_where_failing():
    with pytest.raises(ValueError, match=re.escape("calling `where` on the")):
        eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.c)
    with pytest.raises(ValueError, match=re.escape("`where` selected 0 sub-trees")):
        eb.bayesian(MODEL, blackjax.nuts, where=lambda m: ())
    with pytest.raises(ValueError, match=re.escape("`mask=` cannot be combined")):
        eb.bayesian(MODEL, blackjax.nuts, where=lambda m: (m.a, m.b), mask=True)


def test_overlapping_groups():
    mlp = eqx.nn.MLP(1, 1, 4, 1, key=jr.key(0))
    marked = eb.bayesian(mlp, blackjax.nuts, where=lambda m: m.layers[0])
    with pytest.raises(
        ValueError,
        match=re.escape("overlaps the group 'layers[0]' that is already marked"),
    ):
        eb.bayesian(marked, blackjax.nuts, where=lambda m: m.layers[0].weight)
    with pytest.raises(ValueError, match=re.escape("overlaps the group")):
        eb.bayesian(marked, blackjax.nuts)
    with pytest.raises(ValueError, match=re.escape("a group named 'x' already")):
        eb.bayesian(
            eb.bayesian(mlp, blackjax.nuts, where=lambda m: m.layers[0], name="x"),
            blackjax.nuts,
            where=lambda m: m.layers[1],
            name="x",
        )


def test_inverse_mass_matrix_shape():
    model = eb.bayesian(MODEL, blackjax.nuts, inverse_mass_matrix=jnp.ones(3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the inverse mass matrix must have shape (2,) (diagonal) or "
            "(2, 2) (dense); got shape (3,)"
        ),
    ):
        _solve(model)


def test_steps_too_short():
    model = eb.bayesian(MODEL, blackjax.nuts, warmup=10, keep=10)
    with pytest.raises(
        ValueError, match=re.escape("group 'Coefficients' needs 20 steps")
    ):
        eb.Solver(mse, progress=False).run(model, steps=5, key=jr.key(0), args=DATA)


def test_bad_key_and_solver_options():
    # Keys that pass the annotation but are not one key (the annotation catches
    # the rest when type checking is on; `_as_key` catches them when it is off).
    with pytest.raises(ValueError, match=re.escape("a batch of keys, shape (3,)")):
        _as_key(jr.split(jr.key(0), 3), "init")
    with pytest.raises(TypeError, match=re.escape("`key` must be a JAX PRNG key")):
        _as_key(0, "init")
    with pytest.raises(ValueError, match=re.escape("`print_every` must be a positive")):
        eb.Solver(mse, print_every=0)
    with pytest.raises(TypeError, match=re.escape("optax `GradientTransformation`")):
        eb.Solver(mse, optimizer=object())
    with pytest.raises(ValueError, match=re.escape("no Bayesian groups")):
        eb.Solver(mse).init(MODEL, key=jr.key(0), args=DATA)


def test_unknown_samples_and_strategy():
    posterior = eb.Posterior(Coefficients(None, None), {}, MODEL)
    with pytest.raises(ValueError, match=re.escape("`samples` must be one of 'auto'")):
        posterior.predict(lambda m: m.a, samples="mean")
    with pytest.raises(ValueError, match="strategy"):
        eb.rhat(jnp.ones((2, 10)), strategy="bulk")
    with pytest.raises(ValueError, match="one chain"):
        eb.rhat(jnp.ones((1, 10)), strategy="multichain")


def test_bad_steps_and_predict_batch_size():
    model = eb.bayesian(MODEL, blackjax.nuts, warmup=10, keep=10)
    with pytest.raises(
        ValueError, match=re.escape("`steps` must be a non-negative integer")
    ):
        eb.Solver(mse, progress=False).run(model, steps=-1, key=jr.key(0), args=DATA)
    with pytest.raises(ValueError, match=re.escape("needs 20 steps")):
        eb.Solver(mse, progress=False).run(model, steps=0, key=jr.key(0), args=DATA)
    posterior = eb.Posterior(Coefficients(None, None), {}, MODEL)
    with pytest.raises(ValueError, match=re.escape("`batch_size` must be a positive")):
        posterior.predict(lambda m: m.a, batch_size=0)


# -- masks, optax parts, minibatches, substeps -------------------------------------


def test_bad_masks():
    with pytest.raises(TypeError, match=re.escape("masks select whole leaves")):
        eb.bayesian(MODEL, blackjax.nuts, mask=Coefficients(jnp.array(True), False))
    with pytest.raises(TypeError, match=re.escape("a leaf of type `str`")):
        eb.bayesian(MODEL, blackjax.nuts, mask=Coefficients("yes", False))
    with pytest.raises(ValueError, match=re.escape("Matching it against the sub-tree")):
        eb.bayesian(MODEL, blackjax.nuts, mask=(True, False, True))
    with pytest.raises(ValueError, match=re.escape("the mask selects no floating")):
        eb.bayesian(MODEL, blackjax.nuts, mask=Coefficients(False, False))
    model = eb.bayesian(MODEL, blackjax.nuts, mask=Coefficients(True, False))
    with pytest.raises(
        ValueError, match=re.escape("already belong to group 'Coefficients/mask0'")
    ):
        eb.bayesian(model, blackjax.nuts, mask=Coefficients(True, True))
    with pytest.raises(ValueError, match=re.escape("must use the same `where`")):
        eb.bayesian(model, blackjax.nuts, where=lambda m: m.b, mask=True)
    with pytest.raises(ValueError, match=re.escape("already belong to group")):
        eb.bayesian(model, blackjax.nuts, where=lambda m: m.a)
    # A leaf the masks leave free joins the masked sub-tree as one more group.
    joined = eb.bayesian(model, blackjax.nuts, where=lambda m: m.b)
    assert [g.name for g in joined.groups] == ["Coefficients/mask0", "b"]
    with pytest.raises(ValueError, match=re.escape("already exists")):
        eb.bayesian(
            model,
            blackjax.nuts,
            mask=Coefficients(False, True),
            name="Coefficients/mask0",
        )


def test_bad_optax_parts():
    with pytest.raises(TypeError, match=re.escape("optax `GradientTransformation`")):
        eb.optimise(MODEL, "adam")
    with pytest.raises(ValueError, match=re.escape("must be 'first'")):
        eb.optimise(MODEL, optax.adam(1e-3), chains="all")
    with pytest.raises(ValueError, match=re.escape("`optimizer_chains` must be")):
        eb.Solver(mse, optimizer=optax.adam(1e-3), optimizer_chains="last")
    marked = eb.bayesian(MODEL, blackjax.nuts)
    with pytest.raises(ValueError, match=re.escape("the optimiser has nothing")):
        eb.Solver(mse, optimizer=optax.adam(1e-3)).init(
            marked, key=jr.key(0), args=DATA
        )
    with pytest.raises(ValueError, match=re.escape("no group samples a chain")):
        eb.Solver(mse, optimizer=optax.adam(1e-3), progress=False).run(
            MODEL, key=jr.key(0), args=DATA
        )
    with pytest.raises(ValueError, match=re.escape("overlaps the group 'a'")):
        eb.optimise(
            eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.a),
            optax.adam(1e-3),
        )


def data_mse(model, batch):
    f1, f2, y = batch
    return jnp.mean((model(f1, f2) - y) ** 2)


def test_bad_data_and_batch_size():
    sgld = eb.bayesian(MODEL, blackjax.sgld, step_size=1e-5)
    solver = eb.Solver(data_mse, progress=False)
    with pytest.raises(ValueError, match=re.escape("minibatches are drawn from")):
        solver.init(sgld, key=jr.key(0), batch_size=8)
    with pytest.raises(ValueError, match=re.escape("between 1 and the number")):
        solver.init(sgld, key=jr.key(0), data=DATA, batch_size=500)
    with pytest.raises(ValueError, match=re.escape("the same leading axis")):
        solver.init(
            sgld, key=jr.key(0), data=(DATA[0], DATA[1][:5], DATA[2]), batch_size=4
        )
    with pytest.raises(ValueError, match=re.escape("no part of this model uses")):
        solver.init(
            eb.bayesian(MODEL, blackjax.nuts), key=jr.key(0), data=DATA, batch_size=8
        )
    state = solver.init(sgld, key=jr.key(0), data=DATA, batch_size=8)
    with pytest.raises(ValueError, match=re.escape("pass the same `data=`")):
        solver.step(state)


def test_bad_substeps():
    model = eb.optimise(MODEL, optax.adam(1e-3), where=lambda m: m.b, name="b")
    nuts = eb.bayesian(model, blackjax.nuts, where=lambda m: m.a, name="a")
    fixed = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.a, name="a", adapt=False, step_size=0.1
    )

    def init(substeps, marked=fixed, **kwargs):
        solver = eb.Solver(mse, substeps=substeps, progress=False, **kwargs)
        return solver.init(marked, key=jr.key(0), args=DATA)

    with pytest.raises(TypeError, match=re.escape("must be an `eb.Substep(loss")):
        init([(mse, "a")])
    with pytest.raises(ValueError, match=re.escape("names group 'c'")):
        init([eb.Substep(mse, "c"), eb.Substep(mse, ("a", "b"))])
    with pytest.raises(ValueError, match=re.escape("is in substeps 0 and 1")):
        init([eb.Substep(mse, ("a", "b")), eb.Substep(mse, "a")])
    with pytest.raises(ValueError, match=re.escape("the groups ['b'] are in no")):
        init([eb.Substep(mse, "a")])
    with pytest.raises(ValueError, match=re.escape("(`adapt=True`), but")):
        init([eb.Substep(mse, "b"), eb.Substep(mse, "a")], marked=nuts)
    pooled = eb.bayesian(
        model, blackjax.nuts, where=lambda m: m.a, name="a", adapt="pooled"
    )
    with pytest.raises(ValueError, match=re.escape("(`adapt='pooled'`), but")):
        init([eb.Substep(mse, "b"), eb.Substep(mse, "a")], marked=pooled)
    with pytest.raises(ValueError, match=re.escape("instead of `Solver(optimizer")):
        eb.Solver(mse, optimizer=optax.adam(1e-3), substeps=[eb.Substep(mse, "a")])
    init([eb.Substep(mse, "b"), eb.Substep(mse, "a")])


# -- variational groups ---------------------------------------------------------------

ADAM = optax.adam(1e-2)


def test_vi_and_bayesian_are_exclusive():
    sampled = eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.a)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eb.vi(..., where=...)` for group 'a': the selected sub-tree overlaps the "
            "group 'a' that is already marked with `eb.bayesian`"
        ),
    ):
        eb.vi(sampled, optimizer=ADAM, where=lambda m: m.a)
    with pytest.raises(ValueError, match=re.escape("never both")):
        eb.vi(sampled, optimizer=ADAM)
    fitted = eb.vi(MODEL, optimizer=ADAM)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eb.bayesian(..., where=...)` for group 'b': the selected sub-tree "
            "overlaps the group 'Coefficients' that is already marked with `eb.vi`"
        ),
    ):
        eb.bayesian(fitted, blackjax.nuts, where=lambda m: m.b)


def test_vi_algorithm_must_be_a_variational_family():
    with pytest.raises(
        TypeError,
        match=re.escape(
            "`eb.vi(..., algorithm=nuts)` for group 'Coefficients': this is an MCMC "
            "kernel, not a variational family: sample with "
            "`eb.bayesian(model, blackjax.nuts, ...)`."
        ),
    ):
        eb.vi(MODEL, blackjax.nuts, optimizer=ADAM)
    for algorithm in (blackjax.svgd, blackjax.schrodinger_follmer, lambda p: p):
        with pytest.raises(
            TypeError,
            match=re.escape("is not a variational family that eqbayes fits"),
        ):
            eb.vi(MODEL, algorithm, optimizer=ADAM)


def test_vi_optimizer():
    with pytest.raises(
        TypeError,
        match=re.escape(
            "`eb.vi(...)` for group 'Coefficients' needs `optimizer=`: the optax "
            "transformation"
        ),
    ):
        eb.vi(MODEL)
    with pytest.raises(
        TypeError,
        match=re.escape("`optimizer` must be an optax `GradientTransformation`"),
    ):
        eb.vi(MODEL, optimizer=1e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=0), "`num_samples` must be an integer >= 1; got 0"),
        (dict(posterior_draws=0), "`posterior_draws` must be an integer >= 1; got 0"),
        (dict(init_log_std=float("inf")), "`init_log_std` must be a finite number"),
        (
            dict(likelihood_scale=-1.0),
            "`likelihood_scale` must be a finite number >= 0",
        ),
    ],
)
def test_vi_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        eb.vi(MODEL, optimizer=ADAM, **kwargs)


def test_vi_draws_must_match_the_chains_keep():
    model = eb.bayesian(MODEL, blackjax.nuts, where=lambda m: m.a, keep=300)
    model = eb.vi(model, optimizer=ADAM, where=lambda m: m.b, posterior_draws=200)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eb.vi(..., posterior_draws=200)` for group 'b': the solve also samples "
            "group 'a' with `keep=300`."
        ),
    ):
        _solve(model)


def test_vi_alone_needs_steps():
    model = eb.vi(MODEL, optimizer=ADAM)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`Solver.run(model, steps=None, ...)`: no group samples a chain, so "
            "there is no schedule to take the length from. Pass `steps=`."
        ),
    ):
        eb.Solver(mse, progress=False).run(model, key=jr.key(0), args=DATA)


def test_pattern_e_draws_must_match_keep():
    model = eb.bayesian(MODEL, blackjax.nuts, mask=Coefficients(True, False), keep=50)
    model = eb.vi(model, optimizer=ADAM, mask=Coefficients(False, True))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eb.vi(..., posterior_draws=500)` for group 'Coefficients/mask1': the "
            "solve also samples group 'Coefficients/mask0' with `keep=50`."
        ),
    ):
        _solve(model)


def test_an_initializer_with_vi_is_an_error():
    with pytest.raises(TypeError, match=re.escape("needs none. Drop `init=`")):
        eb.vi(
            MODEL,
            optimizer=optax.adam(1e-2),
            init=eb.initializers.laplace(),
        )
