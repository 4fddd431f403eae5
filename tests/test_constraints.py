import re

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import eqbayes as eb
import eqbayes.constraints as ebc


CONSTRAINTS = [
    ebc.real,
    ebc.positive,
    ebc.greater_than(-2.5),
    ebc.greater_than(np.array([0.0, 1.0, -1.0, 3.0])),
    ebc.interval(-1.0, 3.0),
    ebc.interval(np.array([0.0, 1.0, -1.0, 3.0]), 4.0),
    ebc.unit_interval,
    ebc.simplex,
]


def _jacobian_logdet(constraint, z):
    if isinstance(constraint, ebc.Simplex):
        fn = lambda v: constraint.forward(v)[..., :-1]  # noqa: E731
    else:
        fn = constraint.forward
    return jnp.linalg.slogdet(jax.jacfwd(fn)(z))[1]


@pytest.mark.parametrize("constraint", CONSTRAINTS, ids=repr)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_round_trip_and_jacobian(constraint, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        z = jr.normal(jr.key(0), (4,), dtype)
        theta = constraint.forward(z)
        assert theta.dtype == dtype
        assert constraint.contains(np.asarray(theta))
        rtol = 1e-4 if dtype == jnp.float32 else 1e-10
        np.testing.assert_allclose(constraint.inverse(theta), z, rtol=rtol, atol=rtol)
        logdet = constraint.log_abs_det_jacobian(z)
        assert logdet.dtype == dtype and logdet.shape == ()
        np.testing.assert_allclose(
            logdet, _jacobian_logdet(constraint, z), rtol=rtol, atol=rtol
        )


def test_simplex_shapes_and_batches():
    z = jr.normal(jr.key(1), (3, 2, 4))
    theta = ebc.simplex.forward(z)
    assert theta.shape == (3, 2, 5)
    np.testing.assert_allclose(theta.sum(-1), 1.0, rtol=1e-6)
    assert ebc.simplex.unconstrained_shape((3, 5)) == (3, 4)
    np.testing.assert_allclose(ebc.simplex.forward(jnp.zeros(3)), 0.25, rtol=1e-6)
    per_vector = sum(
        ebc.simplex.log_abs_det_jacobian(z[i, j]) for i in range(3) for j in range(2)
    )
    np.testing.assert_allclose(
        ebc.simplex.log_abs_det_jacobian(z), per_vector, rtol=1e-5
    )


def test_equality_and_hashing():
    assert ebc.greater_than(0.0) == ebc.positive
    assert ebc.interval(0, 1) == ebc.unit_interval
    assert hash(ebc.greater_than(np.ones(2))) == hash(ebc.greater_than(np.ones(2)))
    assert repr(ebc.positive) == "positive"
    assert eb.constraints is ebc


def test_contains():
    assert not ebc.positive.contains(np.array([1.0, 0.0]))
    assert not ebc.unit_interval.contains(1.0)
    assert not ebc.simplex.contains(np.array([0.5, 0.6]))
    assert ebc.simplex.contains(np.array([0.5, 0.5]))


def test_bad_bounds():
    with pytest.raises(ValueError, match=re.escape("`low` must be below `high`")):
        ebc.interval(1.0, 1.0)
    with pytest.raises(ValueError, match="finite numbers"):
        ebc.greater_than(float("nan"))
