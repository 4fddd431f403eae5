"""Marking: the wrappers that live inside the user's model, and `unwrap`."""

import logging
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from ._constrained import (
    get as _get,
    NOT_GIVEN as _NOT_GIVEN,
    path_str as path_str,
    resolve,
    Spec,
    strip,
)
from ._groups import AbstractGroup, is_group
from ._paramax import frozen_flags


logger = logging.getLogger("eqbayes")


class MaskedGroup(eqx.Module):
    """A sub-tree split by masks into groups, each with its own method.

    Made by `mask=` in [`eqbayes.bayesian`][] (and `eb.optimise`, `eb.vi`); do not
    construct it directly. Each member group's `value` is the sub-tree with `None`
    outside its mask; `rest` holds every leaf no mask selects (frozen, or trained by
    the Solver's own optimiser). Only the members' leaves are ever stored per draw.
    """

    rest: PyTree
    groups: tuple[AbstractGroup, ...]

    def combined(self) -> PyTree:
        """The plain sub-tree: `rest` with each member at its current value."""
        parts = [g.current() if is_group(g) else g for g in self.groups]
        return eqx.combine(self.rest, *[p for p in parts if p is not None])

    def marked_value(self) -> PyTree:
        """The plain sub-tree as it was marked."""
        return eqx.combine(self.rest, *[g.value for g in self.groups])


def is_wrapper(x: Any) -> bool:
    return isinstance(x, (AbstractGroup, MaskedGroup))


def _is_masked(x: Any) -> bool:
    return isinstance(x, MaskedGroup)


def collapse(tree: PyTree, *, constrained: bool = True) -> PyTree:
    """Replaces every `MaskedGroup` (whose members are already plain sub-trees) by
    the plain sub-tree, and every constrained leaf by its value (its unconstrained
    array when `constrained=False`)."""
    tree = jax.tree.map(
        lambda x: x.combined() if _is_masked(x) else x, tree, is_leaf=_is_masked
    )
    return resolve(tree) if constrained else strip(tree)


def unwrap(model: PyTree) -> PyTree:
    """Returns the plain model: every eqbayes wrapper replaced by its current value.

    Sampled leaves hold chain 0's current position (after a solve: its last draw),
    in the leaf's own shape; optimised leaves their current value.

    **Arguments:**

    - `model`: a model marked with [`eqbayes.bayesian`][] (or a plain one, which is
        returned unchanged).

    **Returns:**

    The model with the same structure as before marking.

    !!! Example

        ```python
        marked = eb.bayesian(model, blackjax.nuts)
        assert eqx.tree_equal(eb.unwrap(marked), model)
        ```
    """
    return collapse(
        jax.tree.map(
            lambda x: x.current() if is_group(x) else x, model, is_leaf=is_group
        )
    )


def _wrappers_with_paths(model: PyTree) -> list[tuple[tuple, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_wrapper)
    return [(path, leaf) for path, leaf in flat if is_wrapper(leaf)]


def _marked_value(x: Any) -> PyTree:
    return resolve(x.marked_value() if _is_masked(x) else x.value)


_WHERE_MANY = (
    "`{fn}(..., where=...)`: `where` selected {n} sub-trees of the model; it must "
    "return one sub-tree (a leaf, a layer, or the whole model) or a non-empty "
    "tuple of them, e.g. `where=lambda m: (m.mu, m.tau)`."
)
_WHERE_EMPTY = (
    "`{fn}(..., where=...)` for group '{name}': the selected sub-tree has no "
    "floating-point array leaves, so there is nothing to infer. Select a sub-tree "
    "that holds parameters (e.g. `where=lambda m: m.layers[-1]`)."
)
_OVERLAP = (
    "`{fn}(..., where=...)` for group '{name}': the selected sub-tree overlaps "
    "the group '{other}' that is already marked with `{other_fn}`. A leaf can "
    "belong to one group only (a sub-tree is sampled with `eb.bayesian` or fitted "
    "with `eb.vi`, never both); select disjoint sub-trees, or mark again from "
    "`eb.unwrap(model)`."
)
_WHERE_FAILED = (
    "`{fn}(..., where=...)`: calling `where` on the (unwrapped) model failed with "
    "{err!r}. `where` takes the plain model and returns one of its sub-trees "
    "(or a tuple of disjoint ones), e.g. `where=lambda m: m.layers[-1]`."
)


_MASK_STRUCTURE = (
    "`{fn}(..., mask=...)` for group '{name}': the mask must be a pytree of "
    "`True`/`False` with the structure of the `where`-selected sub-tree (or a prefix "
    "of it, e.g. `True` for a whole layer), such as "
    "`eqx.tree_at(lambda m: m.layers[-1], jax.tree.map(lambda _: False, model), "
    "replace=jax.tree.map(lambda _: True, model.layers[-1]))`. {detail}"
)
_MASK_EMPTY = (
    "`{fn}(..., mask=...)` for group '{name}': the mask selects no floating-point "
    "array leaf of the sub-tree, so there is nothing to infer. Set `True` at the "
    "parameters the group should hold."
)
_MASK_OVERLAP = (
    "`{fn}(..., mask=...)` for group '{name}': the mask selects leaves that "
    "already belong to group '{other}'. Masks on one sub-tree must be disjoint."
)
_WHERE_OVERLAP = (
    "`{fn}(..., where=...)` for group '{name}': the selected leaves already belong "
    "to group '{other}'. A leaf can belong to one group only; select other leaves."
)
_MASK_NESTED = (
    "`{fn}(..., where=...)` for group '{name}': the selected sub-tree overlaps the "
    "masked group(s) {others} marked on a different sub-tree. Masked groups that "
    "share parameters' sub-tree must use the same `where` with disjoint masks."
)


def _mask_flags(mask: Any, subtree: PyTree, fn: str, name: str) -> list[bool]:
    """Per leaf of `subtree` (flattening order): selected by `mask`."""
    for leaf in jax.tree.leaves(mask):
        if isinstance(leaf, (bool, np.bool_)):
            continue
        if eqx.is_array(leaf) and leaf.dtype == bool:
            detail = (
                f"Got a boolean array of shape {leaf.shape}: masks select whole "
                "leaves. To sample part of a parameter, make that part its own "
                "leaf (e.g. a low-rank adapter) and select it."
            )
        else:
            detail = f"Got a leaf of type `{type(leaf).__name__}`."
        raise TypeError(_MASK_STRUCTURE.format(fn=fn, name=name, detail=detail))
    marker = _Placeholder()
    try:
        kept = eqx.filter(subtree, mask, replace=marker)
    except Exception as err:  # noqa: BLE001 - re-raised with a clear message
        detail = f"Matching it against the sub-tree failed with: {err}"
        raise ValueError(
            _MASK_STRUCTURE.format(fn=fn, name=name, detail=detail)
        ) from err
    flat = jax.tree.leaves(kept, is_leaf=lambda x: x is marker)
    return [x is not marker for x in flat]


def _claimed(value: PyTree) -> list[bool]:
    """Per leaf of a member's value: whether the member holds it (not None)."""
    flat = jax.tree.leaves(value, is_leaf=lambda x: x is None)
    return [x is not None for x in flat]


def mark(
    model: PyTree,
    make: Callable[..., AbstractGroup],
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: Any = None,
    name: str | None = None,
    call: str = "eb.mark",
    prior: Any = _NOT_GIVEN,
    constraint: Any = None,
) -> PyTree:
    """Puts a group in place of a sub-tree of `model`: what every marking function
    ([`eqbayes.bayesian`][], [`eqbayes.vi`][], [`eqbayes.optimise`][]) does, for
    your own kinds of group too.

    `where` and `mask` select the sub-tree and its leaves exactly as in
    [`eqbayes.bayesian`][] (always on the plain model: existing groups are looked
    through, so groups can be added one call at a time), and every check of the
    selection is made here: a sub-tree without floating-point leaves, an overlap
    with another group, a name used twice are clear errors naming `call`.

    A `where` returning a tuple of sub-trees makes them one group (placed at their
    closest common node, with the rest of that node left as it is).

    Constrained leaves (a `constraint=`, or a prior whose `support` is
    constrained) are stored in the group's value in unconstrained space, so the
    group's position is $z$; the plain model (the loss, `eb.unwrap`, the
    posterior's samples) sees $\theta = T(z)$.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `make`: `make(subtree, name) -> group`: builds the group from the selected
        sub-tree (with `mask=`, the sub-tree with `None` outside the mask) and
        its name. When `prior=` is passed, `make(subtree, name, prior)`, with
        `prior` the group's log prior over its position (the per-part priors and
        the Jacobians of the constraints folded into one callable).
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`; `None` means
        the whole model.
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it).
    - `name`: the group's name; defaults to the `where` path or the model's class
        name.
    - `call`: how error messages name the marking function, e.g.
        `"noise_precision"`.
    - `prior`: for groups with a prior: a prior, or a pytree of priors that is a
        prefix of the selection (a tuple for a tuple `where`); `None` entries mean
        `eb.priors.gaussian(10.0)`.
    - `constraint`: an [`eqbayes.constraints`][] object, or a prefix pytree of
        them (`None` entries: the prior's support).

    **Returns:**

    A new model with the sub-tree wrapped.
    """
    fn = call
    existing = _wrappers_with_paths(model)
    plain = jax.tree.map(
        lambda x: _marked_value(x) if is_wrapper(x) else x, model, is_leaf=is_wrapper
    )
    paths, several = _select(plain, where, fn)
    if several and mask is not None:
        raise ValueError(_WHERE_TUPLE_MASK.format(fn=fn))
    # A selection inside a masked sub-tree joins it as one more member.
    enclosing = [
        p for p, w in existing if _is_masked(w) and all(q[: len(p)] == p for q in paths)
    ]
    by_paths = several or (mask is None and bool(enclosing))
    if by_paths and enclosing:
        path = enclosing[0]
    else:
        path = _common_prefix(paths) if several else paths[0]
    subtree = _get(plain, path) if path else plain
    # Leaves inside a `paramax.NonTrainable` never join a group.
    frozen = frozen_flags(subtree)
    by_paths = by_paths or (mask is None and any(frozen))
    masked = mask is not None or by_paths
    host = None
    if masked:
        hosts = [w for p, w in existing if p == path and _is_masked(w)]
        host = hosts[0] if hosts else None
    if name is None:
        if several:
            name = "(" + ", ".join(path_str(p) or "(model)" for p in paths) + ")"
        else:
            name = path_str(paths[0]) or type(plain).__name__
        if mask is not None:
            name = f"{name}/mask{0 if host is None else len(host.groups)}"
    flags = None
    selected = jax.tree_util.tree_flatten_with_path(subtree)[0]
    if not masked:
        if not jax.tree.leaves(eqx.filter(subtree, eqx.is_inexact_array)):
            raise ValueError(_WHERE_EMPTY.format(fn=fn, name=name))
    else:
        if by_paths:
            rels = [p[len(path) :] for p in paths]
            chosen = [any(q[: len(r)] == r for r in rels) for q, _ in selected]
        else:
            chosen = _mask_flags(mask, subtree, fn, name)
        selected = [s for s, c in zip(selected, chosen) if c]
        flags = [
            c and eqx.is_inexact_array(x) and not f
            for c, x, f in zip(chosen, jax.tree.leaves(subtree), frozen)
        ]
        if not any(flags):
            raise ValueError(
                (_WHERE_EMPTY if by_paths else _MASK_EMPTY).format(fn=fn, name=name)
            )
    _warn_fixed(selected, path, fn, name)
    for other_path, other in existing:
        if other is host:
            continue
        n = min(len(path), len(other_path))
        if path[:n] == other_path[:n]:
            apart = all(
                p[: len(other_path)] != other_path and other_path[: len(p)] != p
                for p in paths
            )
            if several and apart:
                raise ValueError(
                    _TUPLE_AROUND.format(
                        fn=fn,
                        name=name,
                        node=path_str(path) or "(the model)",
                        other=other.groups[0].name if _is_masked(other) else other.name,
                    )
                )
            if _is_masked(other):
                others = ", ".join(f"'{g.name}'" for g in other.groups)
                raise ValueError(_MASK_NESTED.format(fn=fn, name=name, others=others))
            raise ValueError(
                _OVERLAP.format(
                    fn=fn, name=name, other=other.name, other_fn=other.marked_with
                )
            )
    for _, other in existing:
        for group in other.groups if _is_masked(other) else (other,):
            if group.name == name:
                raise ValueError(
                    f"`{fn}(..., name={name!r})`: a group named '{name}' already "
                    "exists in this model. Give each group its own `name=`."
                )
    offsets = [p[len(path) :] for p in paths]
    if several:
        selection = tuple(_get(plain, p) for p in paths)
    else:
        selection = _get(plain, paths[0])
    spec = Spec(selection, several, offsets, path, prior, constraint, fn, name)

    def build(value: PyTree) -> AbstractGroup:
        value, the_prior = spec.apply(value)
        if prior is _NOT_GIVEN:
            return make(value, name)
        return make(value, name, the_prior)

    if flags is None:
        node = build(subtree)
    else:
        members = () if host is None else host.groups
        for member in members:
            if any(a and b for a, b in zip(flags, _claimed(member.value))):
                message = _MASK_OVERLAP if mask is not None else _WHERE_OVERLAP
                raise ValueError(message.format(fn=fn, name=name, other=member.name))
        leaves, treedef = jax.tree.flatten(subtree)
        value = jax.tree.unflatten(
            treedef, [x if f else None for x, f in zip(leaves, flags)]
        )
        members = (*members, build(value))
        claimed = [any(c) for c in zip(*(_claimed(m.value) for m in members))]
        rest = jax.tree.unflatten(
            treedef, [None if c else x for x, c in zip(leaves, claimed)]
        )
        node = MaskedGroup(rest, members)
    out = (
        node if not path else eqx.tree_at(lambda m: _get(m, path), plain, replace=node)
    )
    for other_path, other in existing:
        if other is not host:
            out = eqx.tree_at(lambda m: _get(m, other_path), out, replace=other)
    return out


def _select(plain: PyTree, where: Any, fn: str) -> tuple[list[tuple], bool]:
    """The key paths `where` selects, in its order, and whether it returned a
    tuple of sub-trees."""
    if where is None:
        return [()], False
    try:
        selection = where(plain)
        several = isinstance(selection, tuple)
        wanted = tuple(_Placeholder() for _ in (selection if several else (0,)))
        marked = eqx.tree_at(where, plain, replace=wanted if several else wanted[0])
    except Exception as err:  # noqa: BLE001 - re-raised with a clear message
        raise ValueError(_WHERE_FAILED.format(fn=fn, err=err)) from err
    found = {
        id(leaf): path
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            marked, is_leaf=lambda x: isinstance(x, _Placeholder)
        )[0]
        if isinstance(leaf, _Placeholder)
    }
    if not wanted or any(id(h) not in found for h in wanted):
        raise ValueError(_WHERE_MANY.format(fn=fn, n=len(found)))
    return [found[id(h)] for h in wanted], several


def _common_prefix(paths: list[tuple]) -> tuple:
    first = paths[0]
    n = 0
    while n < len(first) and all(len(p) > n and p[n] == first[n] for p in paths):
        n += 1
    return first[:n]


_TUPLE_AROUND = (
    "`{fn}(..., where=...)` for group '{name}': the sub-trees `where` returned "
    "meet at `{node}`, which already holds the group '{other}'. A group of several "
    "sub-trees is placed at their common node: mark it first, then '{other}'."
)

_WHERE_TUPLE_MASK = (
    "`{fn}(..., where=..., mask=...)`: `where` returned a tuple of sub-trees, "
    "which already selects the group's leaves; `mask=` cannot be combined with it. "
    "Select the leaves with `where` alone, or use one sub-tree and a mask."
)


_FIXED = (
    "`{fn}(...)` for group '{name}': {leaves} {kind}, never inferred: {they} "
    "fixed at {its} value. Make {them} floating-point (`.astype(jnp.float32)`) to "
    "infer {them}, or leave {them} out of `where=`/`mask=`."
)


def _warn_fixed(selected: list, path: tuple, fn: str, name: str) -> None:
    """A warning for integer arrays inside a selection (otherwise silently
    frozen)."""
    fixed = [
        f"`{path_str(path + p) or '(the model)'}` ({x.dtype})"
        for p, x in selected
        if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.integer)
    ]
    if not fixed:
        return
    one = len(fixed) == 1
    logger.warning(
        _FIXED.format(
            fn=fn,
            name=name,
            leaves=", ".join(fixed),
            kind="is an integer array" if one else "are integer arrays",
            they="it stays" if one else "they stay",
            its="its" if one else "their",
            them="it" if one else "them",
        )
    )


class _Placeholder:
    """A unique marker for the node that `where` selects."""
