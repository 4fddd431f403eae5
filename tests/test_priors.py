import math
import re

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.scipy.stats as jss
import numpy as np
import pytest

import eqbayes.priors as ebp


def _random_like(make, seed, dtype):
    """`make(key)`, an Equinox module, with its floating leaves drawn by NumPy.

    The module is built abstractly: running Equinox's initialisers eagerly would compile
    `jax.random` for every weight shape, which costs more than these tests.
    """
    rng = np.random.default_rng(seed)
    shapes = eqx.filter_eval_shape(make, jr.key(0))

    def fill(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jnp.asarray(rng.normal(size=leaf.shape), dtype)
        return leaf

    return jax.tree.map(fill, shapes)


def _tree(seed, dtype):
    """An MLP's floating leaves plus leaves a prior must skip (int, None, Python)."""
    mlp = _random_like(
        lambda key: eqx.nn.MLP(5, 2, width_size=4, depth=2, key=key), seed, dtype
    )
    params, _ = eqx.partition(mlp, eqx.is_inexact_array)
    return {
        "mlp": params,
        "scale": jnp.asarray(0.7, dtype),
        "count": jnp.arange(3),
        "flag": jnp.array([True, False]),
        "missing": None,
        "python": 1.5,
    }


def _float_leaves(tree):
    return [leaf for leaf in jax.tree.leaves(tree) if eqx.is_inexact_array(leaf)]


def _reference(tree, logpdf, scale):
    """`sum(logpdf(theta, scale(leaf)))` over the components of the floating leaves.

    The leaves are flattened into one vector first, so that the eager
    `jax.scipy.stats` call compiles once rather than once per leaf shape.
    """
    leaves = _float_leaves(tree)
    values = np.concatenate([np.asarray(leaf).ravel() for leaf in leaves])
    scales = np.concatenate([np.full(leaf.size, scale(leaf)) for leaf in leaves])
    dtype = leaves[0].dtype
    out = logpdf(jnp.asarray(values, dtype), jnp.asarray(scales, dtype))
    return float(jnp.sum(out))


def _call(prior, tree):
    # Compiled (eager dispatch compiles every operation per leaf shape); `filter_jit`
    # keeps the Python float leaf a Python float.
    return eqx.filter_jit(prior)(tree)


def _fan_in_sigma(leaf, sigma, default):
    return sigma / math.sqrt(math.prod(leaf.shape[1:])) if leaf.ndim >= 2 else default


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    with jax.enable_x64(request.param == "float64"):
        yield jnp.dtype(request.param)


def _rtol(dtype):
    return 1e-12 if dtype == jnp.float64 else 1e-5


def test_gaussian(dtype):
    tree = _tree(0, dtype)
    # Eagerly once; compiled below.
    out = ebp.gaussian(2.0)(tree)
    assert out.shape == () and out.dtype == dtype
    ref = _reference(tree, lambda x, s: jss.norm.logpdf(x, 0.0, s), lambda _: 2.0)
    np.testing.assert_allclose(float(out), ref, rtol=_rtol(dtype))
    # The default is sigma = 10.
    ref = _reference(tree, lambda x, s: jss.norm.logpdf(x, 0.0, s), lambda _: 10.0)
    np.testing.assert_allclose(
        float(_call(ebp.gaussian(), tree)), ref, rtol=_rtol(dtype)
    )


def test_gaussian_fan_in(dtype):
    tree = _tree(0, dtype)
    prior = ebp.gaussian(2.0, fan_in_aware=True)
    out = _call(prior, tree)
    ref = _reference(
        tree,
        lambda x, s: jss.norm.logpdf(x, 0.0, s),
        lambda leaf: _fan_in_sigma(leaf, 2.0, 2.0),
    )
    np.testing.assert_allclose(float(out), ref, rtol=_rtol(dtype))
    # An Equinox weight is (out, in): the fan-in is its second dimension.
    weight = tree["mlp"].layers[0].weight
    assert weight.shape == (4, 5)
    ref = _reference(
        weight, lambda x, s: jss.norm.logpdf(x, 0.0, s), lambda _: 2.0 / math.sqrt(5)
    )
    np.testing.assert_allclose(float(_call(prior, weight)), ref, rtol=_rtol(dtype))
    # Biases keep sigma.
    bias = tree["mlp"].layers[0].bias
    np.testing.assert_allclose(
        float(_call(prior, bias)),
        float(_call(ebp.gaussian(2.0), bias)),
        rtol=_rtol(dtype),
    )


def test_fan_in_of_a_convolution():
    conv = _random_like(
        lambda key: eqx.nn.Conv2d(3, 4, kernel_size=(2, 3), key=key), 1, jnp.float32
    )
    assert conv.weight.shape == (4, 3, 2, 3)
    prior = ebp.layerwise_gaussian(base_sigma=1.5, default_sigma=0.5)
    ref = _reference(
        conv.weight,
        lambda x, s: jss.norm.logpdf(x, 0.0, s),
        lambda _: 1.5 / math.sqrt(18),
    )
    np.testing.assert_allclose(float(_call(prior, conv.weight)), ref, rtol=1e-5)


@pytest.mark.parametrize("fan_in_aware", [True, False])
def test_layerwise_gaussian(fan_in_aware, dtype):
    tree = _tree(0, dtype)
    out = _call(ebp.layerwise_gaussian(2.0, 0.3, fan_in_aware=fan_in_aware), tree)
    assert out.dtype == dtype

    def sigma(leaf):
        if leaf.ndim < 2:
            return 0.3
        return _fan_in_sigma(leaf, 2.0, 0.3) if fan_in_aware else 2.0

    ref = _reference(tree, lambda x, s: jss.norm.logpdf(x, 0.0, s), sigma)
    np.testing.assert_allclose(float(out), ref, rtol=_rtol(dtype))


def test_laplace(dtype):
    tree = _tree(0, dtype)
    out = ebp.laplace(0.5)(tree)
    assert out.shape == () and out.dtype == dtype
    ref = _reference(tree, lambda x, s: jss.laplace.logpdf(x, 0.0, s), lambda _: 0.5)
    np.testing.assert_allclose(float(out), ref, rtol=_rtol(dtype))


def test_student_t(dtype):
    tree = _tree(0, dtype)
    out = ebp.student_t(df=3.5, scale=0.5)(tree)
    assert out.shape == () and out.dtype == dtype
    ref = _reference(tree, lambda x, s: jss.t.logpdf(x, 3.5, 0.0, s), lambda _: 0.5)
    np.testing.assert_allclose(float(out), ref, rtol=_rtol(dtype))
    ref = _reference(tree, lambda x, s: jss.t.logpdf(x, 4.0, 0.0, s), lambda _: 1.0)
    np.testing.assert_allclose(
        float(_call(ebp.student_t(), tree)), ref, rtol=_rtol(dtype)
    )


def test_dtypes():
    priors = [
        ebp.gaussian(),
        ebp.gaussian(1.0, fan_in_aware=True),
        ebp.laplace(),
        ebp.student_t(),
        ebp.layerwise_gaussian(),
    ]
    with jax.enable_x64(True):
        f32 = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(2, jnp.float32)}
        mixed = {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(2, jnp.float64)}
        for prior in priors:
            # No silent promotion of float32 leaves, even with x64 enabled.
            assert prior(f32).dtype == jnp.float32
            # Mixed precisions sum in the widest one.
            assert prior(mixed).dtype == jnp.float64
            # No floating leaves: 0.0 in the default floating dtype.
            assert prior({}).dtype == jnp.float64
            assert prior({"n": jnp.arange(3), "none": None}) == 0.0
    for prior in priors:
        empty = prior([])
        assert empty.shape == () and empty.dtype == jnp.float32 and empty == 0.0


def test_hashable_and_equal():
    assert hash(ebp.gaussian(1.0)) == hash(ebp.gaussian(1.0))
    assert ebp.gaussian(1.0) == ebp.gaussian(1.0)
    assert ebp.gaussian(1) == ebp.gaussian(1.0)
    assert ebp.gaussian(1.0) != ebp.gaussian(2.0)
    assert ebp.gaussian(1.0) != ebp.gaussian(1.0, fan_in_aware=True)
    assert ebp.student_t(4.0, 1.0) == ebp.student_t(df=4, scale=1)
    assert hash(ebp.layerwise_gaussian()) == hash(ebp.layerwise_gaussian())
    assert len({ebp.laplace(0.5), ebp.laplace(0.5), ebp.laplace(1.0)}) == 2
    assert isinstance(ebp.gaussian(), ebp.GaussianPrior)
    assert isinstance(ebp.laplace(), ebp.LaplacePrior)
    assert isinstance(ebp.student_t(), ebp.StudentTPrior)
    assert isinstance(ebp.layerwise_gaussian(), ebp.LayerwiseGaussianPrior)
    # No array leaves: the prior can be a static argument, or a plain pytree argument.
    assert jax.tree.leaves(ebp.student_t()) == []
    x = jnp.linspace(-1.0, 1.0, 5)
    static = jax.jit(lambda prior, x: prior(x), static_argnums=0)
    np.testing.assert_allclose(static(ebp.gaussian(1.0), x), ebp.gaussian(1.0)(x))
    np.testing.assert_allclose(jax.jit(ebp.laplace(2.0))(x), ebp.laplace(2.0)(x))


def test_gradients():
    params = eqx.filter(_tree(0, jnp.float32), eqx.is_inexact_array)
    sigma, b, df, s = 2.0, 0.5, 3.0, 0.7
    priors = (
        ebp.gaussian(sigma),
        ebp.laplace(b),
        ebp.student_t(df, s),
        ebp.layerwise_gaussian(sigma, 0.3),
    )
    # One compilation for the four gradients; the expected values in NumPy.
    grads = eqx.filter_jit(lambda p: [jax.grad(prior)(p) for prior in priors])(params)
    params = jax.tree.map(np.asarray, params)
    expected = [
        jax.tree.map(lambda x: -x / sigma**2, params),
        jax.tree.map(lambda x: -np.sign(x) / b, params),
        jax.tree.map(lambda x: -(df + 1) * x / (df * s**2 + x**2), params),
        jax.tree.map(lambda x: -x / _fan_in_sigma(x, sigma, 0.3) ** 2, params),
    ]
    for grad, exp in zip(grads, expected):
        assert jax.tree.structure(grad) == jax.tree.structure(exp)
        for g, e in zip(jax.tree.leaves(grad), jax.tree.leaves(exp)):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)


def test_positive_arguments():
    sd = "standard deviation"
    cases = [
        (ebp.gaussian, "gaussian", "sigma", sd),
        (ebp.laplace, "laplace", "scale", "scale"),
        (ebp.layerwise_gaussian, "layerwise_gaussian", "base_sigma", sd),
        (ebp.layerwise_gaussian, "layerwise_gaussian", "default_sigma", sd),
        (ebp.student_t, "student_t", "scale", "scale"),
    ]
    for factory, function, argument, what in cases:
        for value in (-1.0, 0.0, math.inf, math.nan):
            message = (
                f"`eqbayes.priors.{function}({argument}={value!r})`: `{argument}` "
                f"must be a finite number > 0, got {value!r} (float). Pass a "
                f"positive {what}, e.g. `{argument}=1.0`."
            )
            with pytest.raises(ValueError, match=re.escape(message)):
                factory(**{argument: value})


def test_student_t_df():
    for value, type_name in ((2.0, "float"), (1, "int"), (math.inf, "float")):
        message = (
            f"`eqbayes.priors.student_t(df={value!r})`: `df` must be > 2 for a finite "
            f"variance, got {value!r} ({type_name}). Pass e.g. `df=4.0` (heavier tails "
            "as `df` approaches 2), or use `eqbayes.priors.gaussian` for the limit "
            "`df -> inf`."
        )
        with pytest.raises(ValueError, match=re.escape(message)):
            ebp.student_t(df=value)
    # The class validates too.
    with pytest.raises(ValueError, match=re.escape("`df` must be > 2")):
        ebp.StudentTPrior(df=2.0)


# -- distributions with a support ---------------------------------------------------

import eqbayes.constraints as ebc  # noqa: E402


_LOC = np.array([0.5, -1.0, 2.0])
_SCALE = np.array([0.5, 1.0, 2.0])
DISTRIBUTIONS = [
    (ebp.normal(3.0, 0.5), lambda x: jss.norm.logpdf(x, 3.0, 0.5), "real"),
    (ebp.normal(_LOC, _SCALE), lambda x: jss.norm.logpdf(x, _LOC, _SCALE), "real"),
    (ebp.half_normal(2.0), lambda x: jss.norm.logpdf(x, 0, 2.0) + math.log(2), "pos"),
    (ebp.half_cauchy(5), lambda x: jss.cauchy.logpdf(x, 0, 5.0) + math.log(2), "pos"),
    (
        ebp.log_normal(0.3, _SCALE),
        lambda x: jss.norm.logpdf(jnp.log(x), 0.3, _SCALE) - jnp.log(x),
        "pos",
    ),
    (ebp.exponential(_SCALE), lambda x: jss.expon.logpdf(x, scale=1 / _SCALE), "pos"),
    (ebp.gamma(2.5, 4.0), lambda x: jss.gamma.logpdf(x, 2.5, scale=0.25), "pos"),
    (ebp.beta(2.0, _SCALE), lambda x: jss.beta.logpdf(x, 2.0, _SCALE), "unit"),
    (
        ebp.uniform(-1.0, np.array([1.0, 2.0, 3.0])),
        lambda x: jss.uniform.logpdf(x, -1.0, np.array([2.0, 3.0, 4.0])),
        "uniform",
    ),
]


def _point(kind, dtype):
    values = {
        "real": [0.3, -1.2, 2.5],
        "pos": [0.3, 1.2, 2.5],
        "unit": [0.3, 0.6, 0.9],
        "uniform": [-0.5, 0.6, 2.5],
    }[kind]
    return jnp.asarray(values, dtype)


@pytest.mark.parametrize("prior, reference, kind", DISTRIBUTIONS, ids=repr)
def test_distribution_log_density(prior, reference, kind, dtype):
    x = _point(kind, dtype)
    got = prior({"a": x, "skip": jnp.arange(2)})
    assert got.dtype == dtype
    want = jnp.sum(reference(x.astype(jnp.float64) if dtype == jnp.float64 else x))
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol)
    assert prior.support.contains(np.asarray(x))
    draws = prior.sample(jr.key(0), (500, 3), dtype)
    assert draws.shape == (500, 3) and draws.dtype == dtype
    assert prior.support.contains(np.asarray(draws))
    assert np.isfinite(float(prior(draws)))


def test_distribution_outside_support():
    assert ebp.half_normal(1.0)(jnp.array([-0.1, 1.0])) == -jnp.inf
    assert ebp.beta(2.0, 2.0)(jnp.array(1.5)) == -jnp.inf


def test_dirichlet(dtype):
    alpha = np.array([1.5, 2.0, 4.0])
    x = jnp.asarray([[0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], dtype)
    got = ebp.dirichlet(alpha)(x)
    want = sum(jss.dirichlet.logpdf(row, jnp.asarray(alpha, dtype)) for row in x)
    rtol = 1e-5 if dtype == jnp.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=rtol)
    assert ebp.dirichlet(alpha).support == ebc.simplex
    draws = ebp.dirichlet(alpha).sample(jr.key(1), (4, 3), dtype)
    assert ebc.simplex.contains(np.asarray(draws))


def test_supports_of_zero_centred_priors():
    for prior in (
        ebp.gaussian(),
        ebp.laplace(),
        ebp.student_t(),
        ebp.layerwise_gaussian(),
    ):
        assert prior.support == ebc.real
        assert prior.sample(jr.key(0), (3, 2)).shape == (3, 2)
    assert ebp.uniform(0, 2).support == ebc.interval(0, 2)


def test_sample_moments():
    draws = ebp.gamma(3.0, 2.0).sample(jr.key(3), (20000,))
    # mean 1.5, sd sqrt(3)/2: 4 standard errors
    assert abs(float(draws.mean()) - 1.5) < 4 * math.sqrt(3) / 2 / math.sqrt(20000)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ebp.normal(0.0, -1.0), "`scale` must be finite and > 0"),
        (lambda: ebp.half_cauchy(0.0), "`scale` must be finite and > 0"),
        (lambda: ebp.gamma(np.array([1.0, -2.0])), "`concentration` must be finite"),
        (lambda: ebp.beta(1.0, float("nan")), "`b` must be finite and > 0"),
        (lambda: ebp.uniform(1.0, 1.0), "`low` must be below `high` everywhere"),
        (lambda: ebp.normal(float("inf")), "`loc` must be finite"),
    ],
)
def test_distribution_parameters_out_of_range(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_distributions_hash():
    assert hash(ebp.normal(np.ones(3), 1.0)) == hash(ebp.normal(np.ones(3), 1.0))
    assert ebp.normal(1, 2) == ebp.normal(1.0, 2.0)
