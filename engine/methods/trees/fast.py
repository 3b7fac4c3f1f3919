"""Interventional TreeSHAP of our own, vectorised; what depends only on model and background is precomputed.

A tree's output is the sum of its leaves' indicator games. For one
reference row ``b`` and the row explained ``x``, a hybrid row
``(x_S, b_S̄)`` reaches a leaf iff, for every feature ``j`` the leaf's path
tests, the path's tests on ``j`` hold for ``x`` (and ``j ∈ S``) or for ``b``
(and ``j ∉ S``). With ``A`` the features only ``x`` satisfies and ``C`` those
only ``b`` satisfies (a feature neither satisfies makes the leaf
unreachable), the leaf's game is ``value · 1[A ⊆ S, S ∩ C = ∅]``, whose
Shapley values are, in closed form,

* ``i ∈ A``: ``+value · (|A| − 1)! |C|! / (|A| + |C|)!``
* ``i ∈ C``: ``−value · |A|! (|C| − 1)! / (|A| + |C|)!``

and 0 for every other feature. The interventional TreeSHAP value is the mean
over the background of these single-reference values (the same numbers as
``shap.TreeExplainer`` with an ``Independent`` masker holding every row).

What depends only on the model and the background is computed once, in
:class:`InterventionalTrees`: every leaf's path as (feature slot, test)
pairs, which tests every background row passes, and — for the margin — the
background rows of each leaf grouped by the pattern of slots they satisfy
(with counts), usually a handful of patterns per leaf. A request then
routes its rows through every split once and combines those bits with the
precomputed patterns: ``O(leaf-pattern pairs × path length)`` numpy work per
row, independent of the background size for the margin.

:meth:`InterventionalTrees.per_reference` keeps the background rows apart
(``(n, m, d, scores)``), for output spaces that transform each reference's
margins (logistic rescaling, the softmax split); it costs
``O(leaves × m × path length)`` per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.arrays import BoolArray, FloatArray, IndexArray
from engine.methods.trees.model import TreeEnsemble

ROW_CHUNK_PAIRS = 1 << 22
"""Row × (leaf, slot) entries handled per numpy pass; bounds memory for many rows."""


@dataclass(frozen=True)
class _Paths:
    """Every leaf's path in flat arrays (over all trees).

    ``slot_*``: one slot per (leaf, distinct feature its path tests);
    ``test_*``: one per split on a path, naming its slot, its node (global
    index) and whether the path goes left there.
    """

    node_feature: IndexArray
    node_threshold: FloatArray
    node_default_left: BoolArray
    leaf_value: FloatArray  # (leaves, scores)
    slot_leaf: IndexArray
    slot_feature: IndexArray
    test_slot: IndexArray
    test_node: IndexArray
    test_left: BoolArray
    leaf_slots: IndexArray  # (leaves + 1,) slot offsets: leaf l owns slots leaf_slots[l]:leaf_slots[l+1]
    slot_tests: IndexArray  # (slots,) first test of each slot (tests are sorted by slot)

    def goes_left(self, Z: FloatArray) -> BoolArray:
        """``(n, nodes)``: at every split node, does the row go left (NaN follows the default child)."""
        x = Z[:, self.node_feature]
        left: BoolArray = np.where(np.isnan(x), self.node_default_left[None, :], x <= self.node_threshold[None, :])
        return left

    def satisfied(self, Z: FloatArray) -> BoolArray:
        """``(n, slots)``: does the row pass every test its slot's path makes on that feature."""
        passed = self.goes_left(Z)[:, self.test_node] == self.test_left[None, :]
        if not len(self.slot_leaf):
            return np.zeros((len(Z), 0), dtype=bool)
        ok: BoolArray = np.logical_and.reduceat(passed, self.slot_tests, axis=1)  # tests sorted by slot
        return ok


def _paths(ensemble: TreeEnsemble) -> _Paths:
    features: list[IndexArray] = []
    thresholds: list[FloatArray] = []
    defaults: list[BoolArray] = []
    values: list[FloatArray] = []
    slot_leaf: list[int] = []
    slot_feature: list[int] = []
    test_slot: list[int] = []
    test_node: list[int] = []
    test_left: list[bool] = []
    leaf_slots = [0]
    offset = 0
    leaf_index = 0
    for tree in ensemble.trees:
        n = len(tree.left)
        features.append(tree.feature)
        thresholds.append(tree.threshold)
        defaults.append(tree.default == tree.left)
        stack: list[tuple[int, list[tuple[int, bool]]]] = [(0, [])]
        while stack:
            node, path = stack.pop()
            if tree.left[node] < 0:
                slots: dict[int, int] = {}
                for split, left in path:
                    feature = int(tree.feature[split])
                    if feature not in slots:
                        slots[feature] = len(slot_leaf)
                        slot_leaf.append(leaf_index)
                        slot_feature.append(feature)
                    test_slot.append(slots[feature])
                    test_node.append(offset + split)
                    test_left.append(left)
                leaf_slots.append(len(slot_leaf))
                values.append(tree.value[node])
                leaf_index += 1
                continue
            stack.append((int(tree.right[node]), [*path, (node, False)]))
            stack.append((int(tree.left[node]), [*path, (node, True)]))
        offset += n
    scores = len(ensemble.base)
    order = np.argsort(np.array(test_slot, dtype=np.intp), kind="stable")
    test_slot = [test_slot[i] for i in order]
    test_node = [test_node[i] for i in order]
    test_left = [test_left[i] for i in order]
    slot_tests = np.searchsorted(np.array(test_slot, dtype=np.intp), np.arange(len(slot_leaf)))
    return _Paths(
        node_feature=np.concatenate(features).astype(np.intp) if features else np.zeros(0, np.intp),
        node_threshold=np.concatenate(thresholds) if thresholds else np.zeros(0),
        node_default_left=np.concatenate(defaults) if defaults else np.zeros(0, bool),
        leaf_value=np.array(values, dtype=np.float64).reshape(-1, scores),
        slot_leaf=np.array(slot_leaf, dtype=np.intp),
        slot_feature=np.array(slot_feature, dtype=np.intp),
        test_slot=np.array(test_slot, dtype=np.intp),
        test_node=np.array(test_node, dtype=np.intp),
        test_left=np.array(test_left, dtype=bool),
        leaf_slots=np.array(leaf_slots, dtype=np.intp),
        slot_tests=slot_tests.astype(np.intp),
    )


def _weights(depth: int) -> tuple[FloatArray, FloatArray]:
    """``W_in[a, c] = (a − 1)! c! / (a + c)!`` and ``W_out[a, c] = a! (c − 1)! / (a + c)!`` (0 where undefined)."""
    w_in = np.zeros((depth + 1, depth + 1))
    w_out = np.zeros((depth + 1, depth + 1))
    for a in range(depth + 1):
        for c in range(depth + 1):
            total = math.factorial(a + c)
            if a:
                w_in[a, c] = math.factorial(a - 1) * math.factorial(c) / total
            if c:
                w_out[a, c] = math.factorial(a) * math.factorial(c - 1) / total
    return w_in, w_out


class InterventionalTrees:
    """Exact interventional TreeSHAP of one ensemble against one background, precomputed for fast rows.

    Example::

        trees = InterventionalTrees(ensemble, ensemble.prepare(background))
        phi, expected = trees.margin(ensemble.prepare(X))  # (n, d, scores), (scores,)

    Args:
        ensemble: The trees (:mod:`engine.methods.trees.model`), scores before ``ensemble.matrix``.
        background: Prepared background rows ``(m, d)`` (``ensemble.prepare``).
    """

    def __init__(self, ensemble: TreeEnsemble, background: FloatArray) -> None:
        self.ensemble = ensemble
        self.background = np.asarray(background, dtype=np.float64)
        self.n_features = self.background.shape[1]
        paths = _paths(ensemble)
        self.paths = paths
        slots_per_leaf = np.diff(paths.leaf_slots)
        self.depth = int(slots_per_leaf.max()) if len(slots_per_leaf) else 0
        self.w_in, self.w_out = _weights(self.depth)
        m = len(self.background)
        # (m, slots): which background rows pass each slot's tests; fixed for this background.
        self.background_ok = paths.satisfied(self.background)
        # Every leaf of a tree with a split has at least one slot (constant trees are in the base).
        reach = np.ones((m, len(slots_per_leaf)), dtype=bool)
        if len(paths.slot_leaf):
            reach = np.logical_and.reduceat(self.background_ok, paths.leaf_slots[:-1], axis=1)
        self.expected = ensemble.base + reach.mean(axis=0) @ paths.leaf_value if m else ensemble.base.copy()
        # Margin: per leaf, the distinct patterns of background bits over its slots, weighted by their share.
        entry_leaf, entry_weight, pair_entry, pair_slot, pair_ok = [], [], [], [], []
        members: list[IndexArray] = []
        entries = 0
        for leaf in range(len(slots_per_leaf)):
            lo, hi = paths.leaf_slots[leaf], paths.leaf_slots[leaf + 1]
            if lo == hi:
                continue  # a leaf with no tests is reached by everything: no attribution
            patterns, inverse, counts = np.unique(
                self.background_ok[:, lo:hi], axis=0, return_inverse=True, return_counts=True
            )
            for e, (pattern, count) in enumerate(zip(patterns, counts, strict=True)):
                members.append(np.flatnonzero(inverse.ravel() == e))
                entry_leaf.append(leaf)
                entry_weight.append(count / m)
                pair_entry += [entries] * (hi - lo)
                pair_slot += list(range(lo, hi))
                pair_ok += pattern.tolist()
                entries += 1
        self.entry_leaf = np.array(entry_leaf, dtype=np.intp)
        self.entry_weight = np.array(entry_weight, dtype=np.float64)
        self.pair_entry = np.array(pair_entry, dtype=np.intp)
        self.pair_slot = np.array(pair_slot, dtype=np.intp)
        self.pair_ok = np.array(pair_ok, dtype=bool)
        # Pairs the pattern's rows fail (F) first, then those they pass (T), each half in entry order: then
        # |A| is the F pairs x passes, |C| the T pairs x fails, and the leaf is dead if x fails an F pair.
        order = np.argsort(self.pair_ok, kind="stable")
        self.pair_entry, self.pair_slot, self.pair_ok = (
            self.pair_entry[order],
            self.pair_slot[order],
            self.pair_ok[order],
        )
        self.fails = int((~self.pair_ok).sum())
        ids = np.arange(entries)
        head, tail = self.pair_entry[: self.fails], self.pair_entry[self.fails :]
        self.f_start, self.f_end = np.searchsorted(head, ids), np.searchsorted(head, ids, side="right")
        self.t_start, self.t_end = np.searchsorted(tail, ids), np.searchsorted(tail, ids, side="right")
        self.pair_feature = paths.slot_feature[self.pair_slot] if len(pair_slot) else np.zeros(0, np.intp)
        self.pair_value = paths.leaf_value[self.entry_leaf[self.pair_entry]] if len(pair_slot) else np.zeros((0, 1))
        # (entries, m): which background rows share each entry's pattern, for per-reference output maps.
        self.membership = np.zeros((entries, m))
        for e, rows in enumerate(members):
            self.membership[e, rows] = 1.0

    def routed(self, Z: FloatArray) -> BoolArray:
        """``(n, slots)``: the one routing pass the other methods take as ``ok`` (so a request routes once)."""
        return self.paths.satisfied(np.asarray(Z, dtype=np.float64))

    def scores(self, Z: FloatArray, ok: BoolArray | None = None) -> FloatArray:
        """The ensemble's summed leaf weights plus base, ``(n, scores)``, routed in one pass over every split."""
        Z = np.asarray(Z, dtype=np.float64)
        base = np.tile(self.ensemble.base, (len(Z), 1))
        if not len(self.paths.slot_leaf):
            return base
        ok = self.paths.satisfied(Z) if ok is None else ok
        reach = np.logical_and.reduceat(ok, self.paths.leaf_slots[:-1], axis=1)
        out: FloatArray = base + reach @ self.paths.leaf_value
        return out

    def margin(self, Z: FloatArray, ok: BoolArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Interventional TreeSHAP values of the scores.

        Args:
            Z: Prepared rows ``(n, d)``.

        Returns:
            ``(phi, expected)``: ``(n, d, scores)`` attributions and the
            ``(scores,)`` mean score over the background; ``expected +
            phi.sum(1)`` is each row's score.
        """
        Z = np.asarray(Z, dtype=np.float64)
        scores = len(self.ensemble.base)
        phi = np.zeros((len(Z), self.n_features, scores))
        if not len(self.pair_entry):
            return phi, self.expected
        ok = self.paths.satisfied(Z) if ok is None else ok
        step = max(1, ROW_CHUNK_PAIRS // len(self.pair_entry))
        for start in range(0, len(Z), step):
            phi[start : start + step] = self._margin_rows(ok[start : start + step])
        return phi, self.expected

    def _margin_rows(self, ok: BoolArray) -> FloatArray:
        n = len(ok)
        coef = self._coefficients(ok, unit_weight=False)
        values = self.pair_value  # (pairs, scores)
        d = self.n_features
        target = (np.arange(n)[:, None] * d + self.pair_feature[None, :]).ravel()
        out = np.zeros((n, d, values.shape[1]))
        for k in range(values.shape[1]):
            weights = (coef * values[None, :, k]).ravel()
            out[:, :, k] = np.bincount(target, weights, minlength=n * d).reshape(n, d)
        return out

    def _coefficients(self, ok: BoolArray, *, unit_weight: bool) -> FloatArray:
        """``(n, pairs)``: each (leaf pattern, slot)'s Shapley coefficient, times the pattern's share unless unit."""
        n = len(ok)
        x_ok = ok[:, self.pair_slot]  # (n, pairs)
        passed_f, passed_t = x_ok[:, : self.fails], x_ok[:, self.fails :]
        sums_f = np.zeros((n, self.fails + 1), dtype=np.int32)
        np.cumsum(passed_f, axis=1, out=sums_f[:, 1:])
        sums_t = np.zeros((n, len(self.pair_ok) - self.fails + 1), dtype=np.int32)
        np.cumsum(passed_t, axis=1, out=sums_t[:, 1:])
        a = sums_f[:, self.f_end] - sums_f[:, self.f_start]  # |A|: tests only x passes
        c = (self.t_end - self.t_start) - (sums_t[:, self.t_end] - sums_t[:, self.t_start])  # |C|: only b passes
        dead = a < (self.f_end - self.f_start)  # x fails a test b fails too
        scale = np.where(dead, 0.0, 1.0 if unit_weight else self.entry_weight[None, :])
        coef = np.empty((n, len(self.pair_ok)))
        coef[:, : self.fails] = passed_f * (self.w_in[a, c] * scale)[:, self.pair_entry[: self.fails]]
        coef[:, self.fails :] = ~passed_t * -(self.w_out[a, c] * scale)[:, self.pair_entry[self.fails :]]
        return coef

    def mapped(self, Z: FloatArray, maps: FloatArray, matrix: FloatArray, ok: BoolArray | None = None) -> FloatArray:
        """Mean over the background of each reference's margin attributions mapped by that reference's matrix.

        ``(1/m) Σ_b W_b φ^b`` with ``φ^b`` the single-reference attributions of
        the margins ``matrix · scores``: the leaves' patterns are shared by the
        rows in them, so the maps are summed per pattern first (one matmul)
        and no per-reference attribution is formed.

        Args:
            Z: Prepared rows ``(n, d)``.
            maps: ``(n, m, K, K)``: ``W_b`` for every row and background row.
            matrix: ``(K, scores)``: margins from the scores.

        Returns:
            ``(n, d, K)``.
        """
        Z = np.asarray(Z, dtype=np.float64)
        n, m, K = len(Z), len(self.background), matrix.shape[0]
        out = np.zeros((n, self.n_features, K))
        if not len(self.pair_entry):
            return out
        margin_value = self.paths.leaf_value[self.entry_leaf] @ matrix.T  # (entries, K)
        ok = self.paths.satisfied(Z) if ok is None else ok
        for i in range(n):
            summed = (self.membership @ maps[i].reshape(m, K * K)).reshape(-1, K, K) / m  # (entries, K, K)
            per_entry = np.einsum("ekc,ec->ek", summed, margin_value)
            coef = self._coefficients(ok[i : i + 1], unit_weight=True)[0]  # (pairs,)
            weights = coef[:, None] * per_entry[self.pair_entry]  # (pairs, K)
            for k in range(K):
                out[i, :, k] = np.bincount(self.pair_feature, weights[:, k], minlength=self.n_features)
        return out

    def per_reference(self, Z: FloatArray) -> FloatArray:
        """Single-reference TreeSHAP values of the scores against each background row.

        Args:
            Z: Prepared rows ``(n, d)``.

        Returns:
            ``(n, m, d, scores)``; the mean over ``m`` is :meth:`margin`'s ``phi``,
            and ``[i, j].sum(0)`` is row ``i``'s score minus reference ``j``'s.
        """
        Z = np.asarray(Z, dtype=np.float64)
        p = self.paths
        m, d = len(self.background), self.n_features
        scores = len(self.ensemble.base)
        out = np.zeros((len(Z), m, d, scores))
        slots = len(p.slot_leaf)
        if not slots:
            return out
        x_all = p.satisfied(Z)  # (n, slots)
        for i in range(len(Z)):
            x_ok = x_all[i][None, :]  # (1, slots)
            b_ok = self.background_ok  # (m, slots)
            only_x = x_ok & ~b_ok
            only_b = b_ok & ~x_ok
            neither = ~x_ok & ~b_ok
            starts = p.leaf_slots[:-1]
            a = np.add.reduceat(only_x.astype(np.intp), starts, axis=1)
            c = np.add.reduceat(only_b.astype(np.intp), starts, axis=1)
            alive = ~np.logical_or.reduceat(neither, starts, axis=1)
            w_in = np.where(alive, self.w_in[a, c], 0.0)[:, p.slot_leaf]  # (m, slots)
            w_out = np.where(alive, self.w_out[a, c], 0.0)[:, p.slot_leaf]
            coef = np.where(only_x, w_in, 0.0) - np.where(only_b, w_out, 0.0)
            values = p.leaf_value[p.slot_leaf]  # (slots, scores)
            target = (np.arange(m)[:, None] * d + p.slot_feature[None, :]).ravel()
            for k in range(scores):
                weights = (coef * values[None, :, k]).ravel()
                out[i, :, :, k] = np.bincount(target, weights, minlength=m * d).reshape(m, d)
        return out
