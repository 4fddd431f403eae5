import math
import re

import arviz
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Private ArviZ helpers, used only to build the single-chain R-hat reference (ArviZ's
# public `rhat` refuses one chain).
from arviz.stats import diagnostics as arviz_diagnostics

import eqbayes.diagnostics as ebd


# The draws come from NumPy generators with fixed seeds: `jax.random` would compile
# its generators for every shape, which costs more than the diagnostics themselves.
# Each (shape, dtype) compiles every diagnostic once, so the cases are few and the
# kinds of draws ride along the parameter axes: one component per kind.
KINDS = ("iid", "ar1", "means", "student_t", "ties", "heavy_ties")
PARAM_SHAPE = (2, 3)
NAMES = ("rhat", "ess", "ess_tail", "mcse_mean")


def _draws(kind, seed, shape):
    """Float64 NumPy draws of shape `(chain, draw, *p)` of a given character."""
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return rng.normal(size=shape)
    if kind == "ar1":
        x = rng.normal(size=shape)
        for t in range(1, shape[1]):
            x[:, t] += 0.9 * x[:, t - 1]
        return x
    if kind == "means":
        offsets = 2.0 * np.arange(shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
        return rng.normal(size=shape) + offsets
    if kind == "student_t":
        return rng.standard_t(3.0, size=shape)
    if kind == "ties":
        return np.round(rng.normal(size=shape), 1)
    if kind == "heavy_ties":
        return np.round(rng.normal(size=shape))
    raise AssertionError(kind)


def _mixed_draws(seed, num_chains, num_draws, dtype):
    """`(num_chains, num_draws, 2, 3)` in `dtype`: one component per kind."""
    columns = [
        _draws(kind, seed + i, (num_chains, num_draws)) for i, kind in enumerate(KINDS)
    ]
    x = np.stack(columns, axis=-1).reshape((num_chains, num_draws) + PARAM_SHAPE)
    return jnp.asarray(x, dtype)


def _rtol(dtype):
    return 1e-10 if dtype == jnp.float64 else 1e-4


def _arviz_rhat_one_chain(a):
    """ArviZ's rank R-hat formula on a `(1, N)` array (its public API returns NaN)."""
    split = arviz_diagnostics._split_chains(a)
    bulk = arviz_diagnostics._rhat(arviz_diagnostics._z_scale(split))
    folded = np.abs(split - np.median(split))
    tail = arviz_diagnostics._rhat(arviz_diagnostics._z_scale(folded))
    return max(bulk, tail)


def _reference(name, x):
    """ArviZ, one parameter component at a time: `(K, N, *p) -> *p` (float64)."""
    x = np.asarray(x)
    k, n, *p = x.shape
    flat = x.reshape(k, n, math.prod(p))
    out = []
    for j in range(flat.shape[-1]):
        a = flat[..., j]
        if name == "rhat":
            value = arviz.rhat(a, method="rank") if k > 1 else _arviz_rhat_one_chain(a)
        elif name == "ess":
            value = arviz.ess(a, method="bulk")
        elif name == "ess_tail":
            value = arviz.ess(a, method="tail")
        elif name == "mcse_mean":
            value = arviz.mcse(a, method="mean")
        else:
            raise AssertionError(name)
        out.append(value)
    return np.asarray(out, dtype=np.float64).reshape(p)


def _assert_matches(name, x, dtype):
    ours = getattr(ebd, name)(x)
    assert ours.dtype == dtype
    ref = _reference(name, x)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(np.asarray(ours, np.float64), ref, rtol=_rtol(dtype))


# The pooled number of draws is never 20 j + 1: there ArviZ's tail-ESS quantile is
# float64 rounding noise that float32 cannot reproduce (`test_ess_tail_rounding_case`).
@pytest.mark.parametrize(
    "num_chains, num_draws, dtype_name",
    [
        (1, 100, "float32"),
        (4, 99, "float32"),
        (1, 99, "float64"),
        (2, 100, "float64"),
    ],
)
def test_matches_arviz(num_chains, num_draws, dtype_name):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        x = _mixed_draws(num_chains * num_draws, num_chains, num_draws, dtype)
        for name in NAMES:
            _assert_matches(name, x, dtype)
        # "auto" is "multichain" for several chains and "split" for one.
        other = "multichain" if num_chains > 1 else "split"
        np.testing.assert_array_equal(ebd.rhat(x), ebd.rhat(x, strategy=other))
        if num_chains > 1:
            assert ebd.rhat(x)[0, 2] > 1.3  # the "means" component


@pytest.mark.parametrize("shape", [(), (3,)])
def test_parameter_shapes(shape):
    x = jnp.asarray(_draws("ar1", 0, (2, 99) + shape), jnp.float32)
    # Every diagnostic shares the vectorisation (and each check compiles anew).
    for name in ("rhat", "ess") if shape == () else ("ess_tail",):
        assert getattr(ebd, name)(x).shape == shape
        _assert_matches(name, x, jnp.float32)


def test_ess_tail_rounding_case():
    # One chain of 101 draws: 101 * 0.05 + 0.95 is 6 up to one float64 rounding;
    # float64 input reproduces ArviZ's arithmetic exactly.
    with jax.enable_x64(True):
        x = jnp.asarray(_draws("iid", 1, (1, 101, 8)), jnp.float64)
        _assert_matches("ess_tail", x, jnp.float64)


@pytest.mark.parametrize(
    "num_chains, num_draws, dtype_name",
    [(2, 101, "float32"), (4, 100, "float64")],
)
def test_rhat_split_many_chains(num_chains, num_draws, dtype_name):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        x = _mixed_draws(7, num_chains, num_draws, dtype)
        # Every chain split in two (the middle draw dropped when odd), then ArviZ's
        # rank R-hat, which splits once more: 4K pieces.
        half = num_draws // 2
        a = np.asarray(x)
        pre_split = np.concatenate([a[:, :half], a[:, num_draws - half :]], axis=0)
        ours = ebd.rhat(x, strategy="split")
        assert ours.dtype == dtype
        np.testing.assert_allclose(
            np.asarray(ours, np.float64),
            _reference("rhat", pre_split),
            rtol=_rtol(dtype),
        )


def test_rhat_detects_problems():
    shape = (4, 99) + PARAM_SHAPE
    # Chains centred at different means.
    means = jnp.asarray(_draws("means", 2, shape), jnp.float32)
    assert np.all(np.asarray(ebd.rhat(means)) > 1.3)
    # A drift inside every chain: the split halves disagree, the chains do not.
    trend = np.linspace(0.0, 4.0, 99).reshape(1, 99, 1, 1)
    drifts = jnp.asarray(_draws("iid", 3, shape) + trend, jnp.float32)
    split = np.asarray(ebd.rhat(drifts, strategy="split"))
    assert np.all(split > 1.2)
    assert np.all(split > np.asarray(ebd.rhat(drifts, strategy="multichain")))
    assert np.all(np.asarray(ebd.rhat(drifts[:1])) > 1.2)
    # Well-mixed draws.
    iid = jnp.asarray(_draws("iid", 4, shape), jnp.float32)
    assert np.all(np.asarray(ebd.rhat(iid)) < 1.05)
    assert np.all(np.asarray(ebd.rhat(iid[:1])) < 1.1)


def test_ess_sanity():
    shape = (4, 99) + PARAM_SHAPE
    iid = jnp.asarray(_draws("iid", 5, shape), jnp.float32)
    ess = np.asarray(ebd.ess(iid))
    assert np.all((ess > 250) & (ess < 650))
    ess_tail = np.asarray(ebd.ess_tail(iid))
    assert np.all((ess_tail > 100) & (ess_tail < 650))
    # sd / sqrt(400) = 0.05.
    mcse = np.asarray(ebd.mcse_mean(iid))
    assert np.all((mcse > 0.03) & (mcse < 0.08))
    # AR(1) with rho = 0.9: ESS about 400 (1 - rho) / (1 + rho) = 21.
    ar = np.asarray(ebd.ess(jnp.asarray(_draws("ar1", 6, shape), jnp.float32)))
    assert np.all((ar > 5) & (ar < 60))


@pytest.mark.parametrize(
    "num_chains, num_draws, dtype_name", [(4, 99, "float32"), (2, 100, "float64")]
)
def test_constant_and_invalid(num_chains, num_draws, dtype_name):
    with jax.enable_x64(dtype_name == "float64"):
        dtype = jnp.dtype(dtype_name)
        shape = (num_chains, num_draws) + PARAM_SHAPE
        x = jnp.full(shape, 0.3, dtype)
        _assert_matches("ess", x, dtype)
        _assert_matches("ess_tail", x, dtype)
        assert np.all(np.isnan(np.asarray(ebd.rhat(x))))
        np.testing.assert_array_equal(ebd.mcse_mean(x), np.zeros(PARAM_SHAPE))
        # A NaN anywhere in a component makes it NaN, as in ArviZ.
        y = np.linspace(0.0, 1.0, math.prod(shape)).reshape(shape)
        y[1, 3, 0, 0] = np.nan
        y = jnp.asarray(y, dtype)
        for name in NAMES:
            out = np.asarray(getattr(ebd, name)(y)).reshape(-1)
            assert np.isnan(out[0])
            assert not np.any(np.isnan(out[1:]))
            # Fewer than 4 draws: NaN, as in ArviZ.
            assert np.all(np.isnan(np.asarray(getattr(ebd, name)(y[:, :3]))))


def test_dtypes():
    ints = np.random.default_rng(8).integers(0, 10, (1, 100) + PARAM_SHAPE)
    assert ebd.rhat(jnp.asarray(ints, jnp.int32)).dtype == jnp.float32
    assert ebd.ess(ints > 4).dtype == jnp.float32
    with jax.enable_x64(True):
        x = jnp.asarray(_draws("iid", 9, (1, 100) + PARAM_SHAPE), jnp.float32)
        assert ebd.rhat(x).dtype == jnp.float32
        ints = np.random.default_rng(8).integers(0, 10, (2, 100) + PARAM_SHAPE)
        assert ebd.ess(jnp.asarray(ints, jnp.int32)).dtype == jnp.float64


def test_jit():
    x = _mixed_draws(10, 4, 99, jnp.float32)

    @eqx.debug.assert_max_traces(max_traces=2)
    def _rhat(x, strategy):
        return ebd.rhat(x, strategy)

    rhat = jax.jit(_rhat, static_argnames="strategy")
    for strategy in ("auto", "split", "auto", "split"):
        np.testing.assert_allclose(
            rhat(x, strategy=strategy), ebd.rhat(x, strategy), rtol=1e-6
        )


def test_errors():
    one_chain = jnp.zeros((1, 100, 3))
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eqbayes.diagnostics.rhat(chain, strategy='multichain')` needs at least "
            "2 chains, but `chain` has shape (1, 100, 3): one chain. Run several "
            "chains (e.g. vmap the sampler over initial keys), or pass "
            "`strategy='split'` (or 'auto') to compare the two halves of the single "
            "chain."
        ),
    ):
        ebd.rhat(one_chain, strategy="multichain")
    with pytest.raises(
        ValueError,
        match=re.escape(
            "`eqbayes.diagnostics.rhat(chain, strategy='rank')`: unknown strategy "
            "'rank'. Valid strategies are 'auto', 'split' and 'multichain'."
        ),
    ):
        ebd.rhat(one_chain, strategy="rank")
    for name in NAMES:
        with pytest.raises(
            ValueError,
            match=re.escape(
                f"`eqbayes.diagnostics.{name}(chain)` needs draws of shape "
                "`(chain, draw, *p)`, with at least two dimensions; got an array of "
                "shape (100,). A single chain of draws `x` with shape `(draw, *p)` "
                "is passed as `x[None]`."
            ),
        ):
            getattr(ebd, name)(jnp.zeros(100))
