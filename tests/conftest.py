import gc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import pytest


jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def getkey():
    """Returns a function that hands out fresh, deterministic keys."""
    base = jr.key(5678)
    counter = iter(range(10**6))

    def _getkey():
        return jr.fold_in(base, next(counter))

    return _getkey


def tree_allclose(x, y, *, rtol=1e-5, atol=1e-8) -> bool:
    """True when two pytrees have the same structure and close leaves."""
    if jax.tree.structure(x) != jax.tree.structure(y):
        return False
    return all(
        bool(jnp.allclose(a, b, rtol=rtol, atol=atol))
        for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))
    )


def tree_equal(x, y) -> bool:
    """True when two pytrees have the same structure and bitwise-equal arrays."""
    return bool(eqx.tree_equal(x, y))


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """Drops each test module's compiled programs when the module ends.

    The suite runs in one process, and every compiled XLA CPU program holds
    memory mappings of its own; without this, the suite's few thousand programs
    pass Linux's default limit of 65,530 mappings per process
    (`vm.max_map_count`) and XLA crashes while compiling.
    """
    yield
    jax.clear_caches()
    gc.collect()
