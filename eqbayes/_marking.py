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

from ._checks import check_prior
from ._constrained import (
    Constrained,
    get as _get,
    LeafPriors,
    resolve,
    strip,
)
from ._groups import AbstractGroup, is_group
from ._paramax import frozen_flags
from .constraints import AbstractConstraint, is_subset, Real, Simplex
from .priors import AbstractPrior


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


_NOT_GIVEN: Any = object()


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
    spec = _Spec(selection, several, offsets, path, prior, constraint, fn, name)

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


# -- priors and constraints per part of the selection -------------------------------

_PRIOR_PREFIX = (
    "`{fn}(..., {arg}=...)` for group '{name}': `{arg}` must be one {what} for the "
    "whole selection, or a pytree of them that is a prefix of the selected "
    "sub-tree(s) (a tuple with one entry per sub-tree for a tuple `where`, a dict "
    "with the same keys, a Module of the same type). At `{at}` the selection holds "
    "{node} but `{arg}` has {spec}."
)
_NOT_A = (
    "`{fn}(..., {arg}=...)` for group '{name}': the entry at `{at}` is {spec!r} of "
    "type `{type}`, not {what}. Use e.g. {example}."
)
_CONTRADICTS = (
    "`{fn}(..., constraint={constraint!r})` for group '{name}': the leaf `{leaf}` "
    "has a prior with support `{support!r}`, and the constraint `{constraint!r}` "
    "is not inside it. Drop `constraint=` (the prior's support is used), or pass "
    "a constraint inside the support."
)
_OUTSIDE = (
    "`{fn}(...)` for group '{name}': the starting value of `{leaf}` is outside "
    "the support `{support!r}` of its {why} (e.g. {example}). Set a value strictly "
    "inside it in the model before marking (e.g. with `eqx.tree_at`)."
)
_SIMPLEX_SHORT = (
    "`{fn}(...)` for group '{name}': the leaf `{leaf}` of shape {shape} is "
    "constrained to the simplex over its last axis, which needs at least 2 "
    "components (a 1-component simplex is the constant 1). Give the leaf a last "
    "axis of length >= 2, or leave it out of the group."
)
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


def _is_node_of(spec: Any, node: Any, leaf_type: type) -> bool:
    """Whether `spec` is a container matching the container `node` (rather than
    one prior / constraint for the whole of `node`)."""
    if isinstance(spec, leaf_type):
        return False
    if isinstance(spec, (tuple, list, dict)):
        return True
    return isinstance(spec, eqx.Module) and type(spec) is type(node)


def _children(x: Any) -> list[tuple[Any, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(x, is_leaf=lambda y: y is not x)[0]
    return [(path[0], child) for path, child in flat]


class _Spec:
    """Matches `prior=` / `constraint=` prefix pytrees against a selection and
    turns the selected value into its unconstrained form."""

    def __init__(
        self, selection, several, offsets, anchor, prior, constraint, fn, name
    ):
        self.several, self.offsets = several, offsets
        self.anchor, self.fn, self.name = anchor, fn, name
        self.has_prior = prior is not _NOT_GIVEN
        self.priors = (
            self._match(prior, selection, "prior") if self.has_prior else [((), None)]
        )
        self.constraints = self._match(constraint, selection, "constraint")
        self.plain_prior = prior

    def _match(self, spec, selection, arg):
        leaf_type = AbstractPrior if arg == "prior" else AbstractConstraint
        out: list[tuple[tuple, Any]] = []

        def walk(s, node, path):
            if s is None or isinstance(s, leaf_type):
                out.append((path, s))
                return
            if _is_node_of(s, node, leaf_type):
                same = type(s) is type(node)
                if same:
                    mine, theirs = _children(s), _children(node)
                    same = [k for k, _ in mine] == [k for k, _ in theirs]
                if not same:
                    raise ValueError(
                        _PRIOR_PREFIX.format(
                            fn=self.fn,
                            arg=arg,
                            name=self.name,
                            what="prior" if arg == "prior" else "constraint",
                            at=path_str(self._absolute(path)) or "(the selection)",
                            node=_describe(node),
                            spec=_describe(s),
                        )
                    )
                for (key, a), (_, b) in zip(mine, theirs):
                    walk(a, b, (*path, key))
                return
            if arg == "prior" and callable(s):
                out.append((path, s))
                return
            raise TypeError(
                _NOT_A.format(
                    fn=self.fn,
                    arg=arg,
                    name=self.name,
                    at=path_str(self._absolute(path)) or "(the selection)",
                    spec=s,
                    type=type(s).__name__,
                    what="a prior" if arg == "prior" else "an `eb.constraints` object",
                    example="`eb.priors.normal(0.0, 1.0)`"
                    if arg == "prior"
                    else "`eb.constraints.positive`",
                )
            )

        walk(spec, selection, ())
        # Paths relative to the group's value.
        return [(self._relative(p), s) for p, s in out]

    def _relative(self, path: tuple) -> tuple:
        """A path into the selection as a path into the group's value."""
        if not self.several:
            return (*self.offsets[0], *path)
        if not path:
            return ()
        return (*self.offsets[path[0].idx], *path[1:])

    def _absolute(self, path: tuple) -> tuple:
        return (*self.anchor, *self._relative(path))

    @staticmethod
    def _owner(entries, path):
        best = None
        for p, s in entries:
            if path[: len(p)] == p and (best is None or len(p) > len(best[0])):
                best = (p, s)
        return best

    def apply(self, value: PyTree) -> tuple[PyTree, Any]:
        """`(value with constrained leaves unconstrained, the group's log prior)`."""
        leaves = jax.tree_util.tree_flatten_with_path(value)[0]
        held: set[tuple] = set()
        replaced = []
        any_constrained = False
        for path, leaf in leaves:
            if not eqx.is_inexact_array(leaf):
                continue
            owner = self._owner(self.priors, path)
            prior_path, the_prior = owner if owner is not None else ((), None)
            held.add(prior_path)
            _, given = self._owner(self.constraints, path) or ((), None)
            c = self._constraint_of(path, leaf, the_prior, given)
            if c is not None:
                replaced.append((path, Constrained(c.inverse(leaf), c)))
                any_constrained = True
        for path, node in replaced:
            if not path:
                value = node
                continue
            value = eqx.tree_at(lambda v, p=path: _get(v, p), value, replace=node)
        if not self.has_prior:
            return value, None
        single = len(self.priors) == 1 and self.priors[0][0] == ()
        if single and not any_constrained:
            return value, check_prior(self.plain_prior, self.name, _fn_name(self.fn))
        parts = tuple(
            (p, check_prior(s, self.name, _fn_name(self.fn)))
            for p, s in self.priors
            if p in held
        )
        return value, LeafPriors(parts)

    def _constraint_of(self, path, leaf, the_prior, given):
        leaf_name = path_str((*self.anchor, *path)) or "(the model)"
        support = the_prior.support if isinstance(the_prior, AbstractPrior) else None
        if given is not None and support is not None and not is_subset(given, support):
            raise ValueError(
                _CONTRADICTS.format(
                    fn=self.fn,
                    name=self.name,
                    leaf=leaf_name,
                    support=support,
                    constraint=given,
                )
            )
        c = given if given is not None else support
        if c is None or isinstance(c, Real):
            return None
        if isinstance(c, Simplex) and (leaf.ndim == 0 or leaf.shape[-1] < 2):
            raise ValueError(
                _SIMPLEX_SHORT.format(
                    fn=self.fn, name=self.name, leaf=leaf_name, shape=leaf.shape
                )
            )
        if _is_concrete(leaf):
            try:
                inside = c.contains(np.asarray(leaf))
            except ValueError:  # bounds that do not broadcast against the leaf
                inside = False
            if not inside:
                flat = np.asarray(leaf).ravel()
                raise ValueError(
                    _OUTSIDE.format(
                        fn=self.fn,
                        name=self.name,
                        leaf=leaf_name,
                        support=c,
                        why="constraint" if given is not None else "prior",
                        example=f"{flat[:4].tolist()}{' ...' if flat.size > 4 else ''}",
                    )
                )
        return c


def _is_concrete(x: Any) -> bool:
    try:
        np.asarray(x)
    except jax.errors.TracerArrayConversionError:
        return False
    return True


def _fn_name(call: str) -> str:
    return call[3:] if call.startswith("eb.") else call


def _describe(x: Any) -> str:
    if eqx.is_array(x):
        return f"an array of shape {x.shape}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    return f"a `{type(x).__name__}`"


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
