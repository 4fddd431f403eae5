"""Marking: the wrappers that live inside the user's model, and `unwrap`."""

import logging
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import DictKey, FlattenedIndexKey, GetAttrKey, SequenceKey
from jaxtyping import PyTree

from ._groups import AbstractGroup, is_group


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


def collapse(tree: PyTree) -> PyTree:
    """Replaces every `MaskedGroup` (whose members are already plain sub-trees) by
    the plain sub-tree."""
    return jax.tree.map(
        lambda x: x.combined() if _is_masked(x) else x, tree, is_leaf=_is_masked
    )


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


def path_str(path: tuple) -> str:
    """`layers[2].weight` from a key path."""
    out = ""
    for key in path:
        if isinstance(key, GetAttrKey):
            out += f".{key.name}"
        elif isinstance(key, SequenceKey):
            out += f"[{key.idx}]"
        elif isinstance(key, DictKey):
            out += f"[{key.key!r}]"
        elif isinstance(key, FlattenedIndexKey):
            out += f"[{key.key}]"
        else:
            out += str(key)
    return out.lstrip(".")


def _wrappers_with_paths(model: PyTree) -> list[tuple[tuple, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_wrapper)
    return [(path, leaf) for path, leaf in flat if is_wrapper(leaf)]


def _marked_value(x: Any) -> PyTree:
    return x.marked_value() if _is_masked(x) else x.value


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        if isinstance(key, GetAttrKey):
            tree = getattr(tree, key.name)
        elif isinstance(key, SequenceKey):
            tree = tree[key.idx]
        elif isinstance(key, DictKey):
            tree = tree[key.key]
        else:  # pragma: no cover - exotic pytree nodes
            raise TypeError(f"Cannot follow the key {key!r} of a path into a model.")
    return tree


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
    "{err!r}. `where` takes the plain model and returns one of its sub-trees (or a "
    "tuple of disjoint sub-trees, which form one group), "
    "e.g. `where=lambda m: m.layers[-1]`."
)


_WHERE_TUPLE_MASK = (
    "`{fn}(..., where=..., mask=...)`: `where` returned {n} sub-trees, so `mask` "
    "must be a tuple of {n} masks, one per sub-tree (or `True`); got {mask!r}."
)


def _several(plain: PyTree, paths: list[tuple], mask: Any, fn: str):
    """A `where` that returned several disjoint sub-trees, as one group: the
    sub-trees' nearest common ancestor with a mask selecting them (and, with
    `mask=`, only the leaves each sub-tree's mask selects). Returns `(path, mask,
    default name)`. (`eqx.tree_at` has already rejected nested sub-trees.)"""
    depth = 0
    while all(len(p) > depth and p[depth] == paths[0][depth] for p in paths):
        depth += 1
    ancestor = paths[0][:depth]
    if mask is None or mask is True:
        masks = [True] * len(paths)
    elif isinstance(mask, (tuple, list)) and len(mask) == len(paths):
        masks = list(mask)
    else:
        raise ValueError(_WHERE_TUPLE_MASK.format(fn=fn, n=len(paths), mask=mask))
    base = _get(plain, ancestor) if ancestor else plain
    flags = jax.tree.map(lambda _: False, base)
    inner = [p[depth:] for p in paths]
    combined = eqx.tree_at(lambda t: [_get(t, p) for p in inner], flags, replace=masks)
    name = "(" + ", ".join(path_str(p) for p in paths) + ")"
    return ancestor, combined, name


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
    make: Callable[[PyTree, str], AbstractGroup],
    *,
    where: Callable[[PyTree], Any] | None = None,
    mask: Any = None,
    name: str | None = None,
    call: str = "eb.mark",
) -> PyTree:
    """Puts a group in place of a sub-tree of `model`: what every marking function
    ([`eqbayes.bayesian`][], [`eqbayes.vi`][], [`eqbayes.optimise`][]) does, for
    your own kinds of group too.

    `where` and `mask` select the sub-tree and its leaves exactly as in
    [`eqbayes.bayesian`][] (always on the plain model: existing groups are looked
    through, so groups can be added one call at a time), and every check of the
    selection is made here: a sub-tree without floating-point leaves, an overlap
    with another group, a name used twice are clear errors naming `call`.

    **Arguments:**

    - `model`: any pytree, usually an `eqx.Module`; may already hold other groups.
    - `make`: `make(subtree, name) -> group`: builds the group from the selected
        sub-tree (with `mask=`, the sub-tree with `None` outside the mask) and
        its name.
    - `where`: selects the sub-tree, like `eqx.tree_at`'s `where`; `None` means
        the whole model. A tuple of disjoint sub-trees forms one group (held as
        a masked group on their nearest common ancestor; named after their paths
        unless `name=` is given).
    - `mask`: a pytree of bools over the selected sub-tree (or a prefix of it);
        with a tuple of sub-trees, a tuple of masks, one per sub-tree.
    - `name`: the group's name; defaults to the `where` path or the model's class
        name.
    - `call`: how error messages name the marking function, e.g.
        `"noise_precision"`.

    **Returns:**

    A new model with the sub-tree wrapped.
    """
    fn = call
    existing = _wrappers_with_paths(model)
    plain = jax.tree.map(
        lambda x: _marked_value(x) if is_wrapper(x) else x, model, is_leaf=is_wrapper
    )
    placeholder = _Placeholder()
    if where is None:
        marked = placeholder
    else:
        try:
            marked = eqx.tree_at(where, plain, replace_fn=lambda _: placeholder)
        except Exception as err:  # noqa: BLE001 - re-raised with a clear message
            raise ValueError(_WHERE_FAILED.format(fn=fn, err=err)) from err
    found = [
        (path, leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(
            marked, is_leaf=lambda x: x is placeholder
        )[0]
        if leaf is placeholder
    ]
    if len(found) > 1:
        path, mask, default = _several(plain, [p for p, _ in found], mask, fn)
        name = default if name is None else name
    else:
        path = found[0][0]
    subtree = _get(plain, path) if path else plain
    host = None
    if mask is not None:
        hosts = [w for p, w in existing if p == path and _is_masked(w)]
        host = hosts[0] if hosts else None
    if name is None:
        name = path_str(path) or type(plain).__name__
        if mask is not None:
            name = f"{name}/mask{0 if host is None else len(host.groups)}"
    flags = None
    selected = jax.tree_util.tree_flatten_with_path(subtree)[0]
    if mask is None:
        if not jax.tree.leaves(eqx.filter(subtree, eqx.is_inexact_array)):
            raise ValueError(_WHERE_EMPTY.format(fn=fn, name=name))
    else:
        chosen = _mask_flags(mask, subtree, fn, name)
        selected = [s for s, c in zip(selected, chosen) if c]
        flags = [
            c and eqx.is_inexact_array(x)
            for c, x in zip(chosen, jax.tree.leaves(subtree))
        ]
        if not any(flags):
            raise ValueError(_MASK_EMPTY.format(fn=fn, name=name))
    _warn_fixed(selected, path, fn, name)
    for other_path, other in existing:
        if other is host:
            continue
        n = min(len(path), len(other_path))
        if path[:n] == other_path[:n]:
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
    if flags is None:
        node = make(subtree, name)
    else:
        members = () if host is None else host.groups
        for member in members:
            if any(a and b for a, b in zip(flags, _claimed(member.value))):
                raise ValueError(
                    _MASK_OVERLAP.format(fn=fn, name=name, other=member.name)
                )
        leaves, treedef = jax.tree.flatten(subtree)
        value = jax.tree.unflatten(
            treedef, [x if f else None for x, f in zip(leaves, flags)]
        )
        members = (*members, make(value, name))
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
