"""Placing a solve on a device mesh: chains over `"chains"`, data over `"data"`.

eqbayes runs sharded solves on JAX's own SPMD machinery. The state is placed once
with `NamedSharding`s (the parts of each chain group that carry the chain axis, as
its `chain_axes()` says, over the mesh's `"chains"` axis, everything else
replicated; the `data=` pytree along its leading axis over `"data"`), and the
compiled step follows its inputs: XLA partitions the vmapped chains and inserts the
reductions of a data-parallel loss. The only cross-chain computation, the shared
window adaptation, first gathers the chains' acceptance rates and positions
(`gathered`), so that every device reduces them in the order one device would. Each
device vmaps its own block of chains (`over_devices`). A sharded solve gives every
chain the keys and starting point of the unsharded solve with the same key, but not
necessarily its bits: XLA compiles each device's step for a batch of K / n chains
instead of K and may then carry out an operation in another order (on CPU, for
instance, a gradient's sum over the data points), whatever the number of chains per
device. The chains then agree to rounding and may later drift apart
(docs/scaling.md lists measured cases). A one-device mesh compiles the unsharded
program and gives its bits; the same key, mesh and K give the same bits on every
run.
"""

import contextlib
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


CHAINS = "chains"
DATA = "data"

_MESH_TYPE = (
    "`Solver.{fn}(..., mesh=...)`: `mesh` must be a `jax.sharding.Mesh`, e.g. "
    "`jax.sharding.Mesh(jax.devices(), ('chains',))`; got an object of type "
    "`{type}`."
)
_MESH_AXES = (
    "`Solver.{fn}(..., mesh=...)`: the mesh's axes must be named 'chains' and/or "
    "'data'; got {names}. Build it as e.g. `jax.sharding.Mesh(devices.reshape(4, 2), "
    "('chains', 'data'))`."
)
_CHAINS_DIVIDE = (
    "`Solver.{fn}(..., mesh=...)`: group '{name}' runs num_chains={k}, which the "
    "mesh's 'chains' axis of size {size} does not divide. Use a multiple of {size} "
    "chains (e.g. `num_chains={fix}`), or a mesh whose 'chains' axis divides {k}."
)
_NO_DATA = (
    "`Solver.{fn}(..., mesh=...)`: the mesh has a 'data' axis of size {size}, which "
    "shards the `data=` pytree along its leading axis, but no `data=` was given. "
    "Pass the per-datum arrays as `data=` (the loss is then `loss(model, data, "
    "*args)`), or use a mesh without a 'data' axis."
)
_DATA_DIVIDE = (
    "`Solver.{fn}(..., data=...)`: the data leaf at `data{path}` has shape "
    "{shape}; the mesh's 'data' axis of size {size} shards every data leaf along "
    "its leading axis, which must be a multiple of {size}. Drop or pad data points "
    "to a multiple of {size}, or use a smaller 'data' axis."
)


def check_mesh(mesh: Any, fn: str, num_chains: dict[str, int], data: Any) -> None:
    """Raises a clear error, before anything is compiled, if the solve cannot be
    placed on `mesh`. `num_chains` maps the chained groups' names to their K."""
    if not isinstance(mesh, Mesh):
        raise TypeError(_MESH_TYPE.format(fn=fn, type=type(mesh).__name__))
    names = tuple(mesh.axis_names)
    if not names or not set(names) <= {CHAINS, DATA}:
        raise ValueError(_MESH_AXES.format(fn=fn, names=names))
    size = mesh.shape.get(CHAINS, 1)
    for name, k in num_chains.items():
        if k % size:
            fix = size * -(-k // size)
            raise ValueError(
                _CHAINS_DIVIDE.format(fn=fn, name=name, k=k, size=size, fix=fix)
            )
    size = mesh.shape.get(DATA, 1)
    if DATA in names and data is None:
        raise ValueError(_NO_DATA.format(fn=fn, size=size))
    if data is not None:
        for path, leaf in jax.tree_util.tree_flatten_with_path(data)[0]:
            shape = jnp.shape(leaf)
            if not shape or shape[0] % size:
                raise ValueError(
                    _DATA_DIVIDE.format(
                        fn=fn, path=jax.tree_util.keystr(path), shape=shape, size=size
                    )
                )


def _device_put(tree: Any, shardings: Any) -> Any:
    """`jax.device_put` of every array leaf of `tree` at once (one dispatch), to the
    sharding at the same place in `shardings` (a pytree with `tree`'s structure
    down to its leaves). Typed PRNG keys travel as their key data, which
    `device_put` can check across processes."""
    leaves, treedef = jax.tree.flatten(tree)
    targets = treedef.flatten_up_to(shardings)
    index = [i for i, x in enumerate(leaves) if eqx.is_array(x)]
    keys = {i for i in index if jnp.issubdtype(leaves[i].dtype, jax.dtypes.prng_key)}
    raw = [jr.key_data(leaves[i]) if i in keys else leaves[i] for i in index]
    placed = jax.device_put(raw, [targets[i] for i in index])
    for i, x in zip(index, placed):
        leaves[i] = jr.wrap_key_data(x, impl=jr.key_impl(leaves[i])) if i in keys else x
    return jax.tree.unflatten(treedef, leaves)


def place(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of `tree` replicated on `mesh`."""
    replicate = NamedSharding(mesh, P())
    return _device_put(tree, jax.tree.map(lambda _: replicate, tree))


def place_model(model: Any, mesh: Mesh, chain_axes: Callable[[Any], Any]) -> Any:
    """Places a marked model on `mesh`. `chain_axes(node)` is, for a node of the
    model, a prefix pytree of it: True over the parts whose arrays have the chain
    axis first (sharded over `"chains"`), False over the rest (replicated); None
    for a node that is not a group of chains (replicated whole)."""
    chained = NamedSharding(mesh, P(CHAINS))
    replicate = NamedSharding(mesh, P())

    def sharding(node):
        flags = chain_axes(node)
        if flags is None:
            return jax.tree.map(lambda _: replicate, node)
        return jax.tree.map(
            lambda flag, part: jax.tree.map(
                lambda _: chained if flag else replicate, part
            ),
            flags,
            node,
        )

    is_node = lambda x: chain_axes(x) is not None  # noqa: E731
    shardings = jax.tree.map(
        lambda x: sharding(x) if is_node(x) else replicate, model, is_leaf=is_node
    )
    return _device_put(model, shardings)


def place_data(data: Any, mesh: Mesh) -> Any:
    """Places the `data=` pytree: along its leading axis over `"data"` when the
    mesh has that axis, else replicated."""
    sharding = NamedSharding(mesh, P(DATA) if DATA in mesh.axis_names else P())
    data = jax.tree.map(jnp.asarray, data)
    return _device_put(data, jax.tree.map(lambda _: sharding, data))


def mesh_of(tree: Any) -> Mesh | None:
    """The mesh a placed state lives on (that of its first array leaf), or None."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and isinstance(sharding.mesh, Mesh):
            return sharding.mesh
    return None


def using(mesh: Mesh | None):
    """The context under which a placed solve is traced (`jax.set_mesh`)."""
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


# -- inside a traced step ------------------------------------------------------------


def chains_axis() -> bool:
    """Whether the step is traced for a mesh whose `"chains"` axis has several
    devices (the solve runs under `using(mesh)`)."""
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and dict(mesh.shape).get(CHAINS, 1) > 1


def over_devices(fn: Any, *batched: Any) -> Any:
    """`jax.vmap(fn)` over the leading chain axis, each device vmapping its own
    block of chains (`jax.shard_map`, manual over `"chains"` only, so that a
    `"data"` axis stays automatic): no collective inside a kernel's step, and each
    device's NUTS loop stops when its own chains are done."""
    chains = P(CHAINS)
    return jax.shard_map(
        jax.vmap(fn),
        in_specs=chains,
        out_specs=chains,
        axis_names={CHAINS},
        # blackjax's `lax.cond`s mix per-chain and shared values in branches.
        check_vma=False,
    )(*batched)


def over_particles(fn: Callable, *batched: Any) -> Any:
    """`jax.vmap(fn)` over a leading particle axis (tempered SMC). In a solve on a
    mesh whose `"chains"` axis has several devices, each device vmaps its own block
    of particles (as `over_devices`), when their number is a multiple of the axis
    size; otherwise every device computes every particle."""
    size = jax.tree.leaves(batched)[0].shape[0]
    if chains_axis():
        devices = dict(jax.sharding.get_abstract_mesh().shape)[CHAINS]
        if size % devices == 0:
            return over_devices(fn, *batched)
    return jax.vmap(fn)(*batched)


def gathered(tree: Any) -> Any:
    """`tree` gathered onto every device (a no-op unless `chains_axis()`): a
    reduction over chains then runs in the order one device would run it, so the
    shared adaptation, and the chains after it, keep every bit."""
    if not chains_axis():
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P()), tree)


def over_chains(fn: Callable, *batched: Any) -> Any:
    """`jax.vmap(fn)` over the leading chain axis, or a plain call when there is one
    chain: a vmap of size one still costs NUTS's dynamic loops noticeably. In a
    solve placed on a mesh, each device vmaps its own chains. Without any leaf
    (no chains at all) `fn` is called once and its output gets a leading axis of
    one."""
    leaves = jax.tree.leaves(batched)
    if chains_axis() and leaves:
        return over_devices(fn, *batched)
    size = leaves[0].shape[0] if leaves else 1
    if size > 1:
        return jax.vmap(fn)(*batched)
    out = fn(*jax.tree.map(lambda x: x[0], batched))
    return jax.tree.map(lambda x: jnp.expand_dims(jnp.asarray(x), 0), out)
