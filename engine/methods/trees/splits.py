"""Rewriting an ensemble's node tables (ONNX branch modes) into shap's "x ≤ t goes left" trees.

Each comparison is made in the ensemble's input type (``Forest.compare``) and
becomes a ≤ test on those values: LEQ → (true, t), LT → (true, prev(t)),
GT → (false, t), GTE → (false, prev(t)), prev being the next value down in
that type. EQ, NEQ and MEMBER become intervals (prev(v), v] cut by ≤ nodes;
a subtree an interval reaches twice is copied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.arrays import FloatArray, IntArray
from engine.methods.trees.model import Tree, TreeEnsemble, not_applicable

MAX_NODES = 2_000_000
MAX_DEPTH = 400


@dataclass
class Forest:
    """The node tables of one ensemble node, before the rewrite (rows: nodes, then leaves)."""

    roots: list[int]
    is_leaf: npt.NDArray[np.bool_]
    mode: list[str]
    feature: IntArray
    split: FloatArray
    members: dict[int, list[float]]
    true: IntArray
    false: IntArray
    nan_true: npt.NDArray[np.bool_]
    weights: FloatArray
    compare: type[np.floating[Any]] = np.float32
    post_transform: str = "NONE"
    matrix: FloatArray = field(default_factory=lambda: np.eye(1))
    offset: FloatArray = field(default_factory=lambda: np.zeros(1))
    base: FloatArray = field(default_factory=lambda: np.zeros(1))
    is_classifier: bool = False
    labels: tuple[str, ...] = ()

    def build(self, n_features: int, casts: tuple[type[np.floating[Any]], ...], norm: str | None) -> TreeEnsemble:
        """Rewrite every tree, fold constant trees into the base and an L1 ``Normalizer`` into the margins."""
        if self.post_transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
            raise not_applicable(f"post_transform {self.post_transform} is not supported")
        self.compare = casts[-1]
        builder = TreeBuilder(self)
        trees = [builder.tree(root) for root in self.roots]
        base = self.base + sum((t.value[0] for t in trees if t.left[0] < 0), np.zeros_like(self.base))
        trees = [t for t in trees if t.left[0] >= 0]
        if n_features and trees and max(int(t.feature.max()) for t in trees) >= n_features:
            raise not_applicable("a split uses a feature beyond the model input")
        matrix, offset = self.matrix, self.offset
        if norm is not None:
            matrix, offset = _fold_normalizer(norm, trees, base, matrix, offset, self.post_transform)
        for t in trees:
            for array in vars(t).values():
                array.setflags(write=False)
        return TreeEnsemble(
            tuple(trees), base, n_features, casts, self.post_transform, matrix, offset, self.is_classifier, self.labels
        )


def _fold_normalizer(
    norm: str, trees: list[Tree], base: FloatArray, matrix: FloatArray, offset: FloatArray, post: str
) -> tuple[FloatArray, FloatArray]:
    """Fold an L1 ``Normalizer`` into the margins when the outputs' sum is a constant."""
    if norm == "L1" and (post == "SOFTMAX" or (post == "LOGISTIC" and matrix.shape == (2, 1))):
        return matrix, offset  # the outputs already sum to one
    if norm != "L1" or post != "NONE":
        raise not_applicable(f"a {norm} Normalizer after {post} scores is not linear")
    total = float((matrix @ base + offset).sum())
    for tree in trees:
        sums = (tree.value[tree.left < 0] @ matrix.T).sum(axis=1)
        if np.ptp(sums) > 1e-6 * (1 + np.abs(sums).max()):
            raise not_applicable("an L1 Normalizer divides by a sum that changes with the input")
        total += float(sums[0])
    if total <= 0:
        raise not_applicable("an L1 Normalizer divides by a non-positive sum")
    return matrix / total, offset / total


class TreeBuilder:
    """Emit the trees of a ``Forest`` in shap's layout, splitting every test into ≤ nodes."""

    def __init__(self, forest: Forest) -> None:
        self.forest = forest
        self.total = 0
        self.nodes: list[list[float]] = []

    def tree(self, root: int) -> Tree:
        self.nodes = []  # per node: left, right, default, feature, threshold, forest row of a leaf
        self._emit(int(root), 0)
        table = np.array(self.nodes, dtype=np.float64).reshape(-1, 6)
        ints = table[:, [0, 1, 2, 3, 5]].astype(np.int64)
        leaf_rows = ints[:, 4]
        value = np.where((leaf_rows >= 0)[:, None], self.forest.weights[np.maximum(leaf_rows, 0)], 0.0)
        return Tree(ints[:, 0], ints[:, 1], ints[:, 2], ints[:, 3], table[:, 4].copy(), value)

    def _new(self, feature: int = 0, threshold: float = 0.0, leaf_row: int = -1) -> int:
        self.total += 1
        if self.total > MAX_NODES:
            raise not_applicable(f"categorical splits expand the trees beyond {MAX_NODES} nodes")
        self.nodes.append([-1, -1, -1, feature, threshold, leaf_row])
        return len(self.nodes) - 1

    def _link(self, node: int, left: int, right: int, default: int) -> int:
        self.nodes[node][:3] = [left, right, default]
        return node

    def _emit(self, row: int, depth: int) -> int:
        f = self.forest
        if depth > MAX_DEPTH:
            raise not_applicable(f"a tree is deeper than {MAX_DEPTH} levels (or has a cycle)")
        if f.is_leaf[row]:
            return self._new(leaf_row=row)
        if f.true[row] == f.false[row]:
            return self._emit(int(f.true[row]), depth + 1)
        bounds, labels, nan_label = self._regions(row)
        if nan_label in labels:
            return self._emit_regions(row, bounds, labels, nan_label, 0, len(labels) - 1, depth)
        # Only NaN takes that branch: x ≤ +inf holds for every number, so NaN alone goes right.
        node = self._new(int(f.feature[row]), np.inf)
        left = self._emit_regions(row, bounds, labels, nan_label, 0, len(labels) - 1, depth + 1)
        right = self._emit(int(f.true[row] if nan_label else f.false[row]), depth + 1)
        return self._link(node, left, right, right)

    def _emit_regions(
        self, row: int, bounds: list[float], labels: list[bool], nan_label: bool, lo: int, hi: int, depth: int
    ) -> int:
        """Emit a balanced ≤ tree over the regions ``lo..hi``; each region leads to its branch."""
        f = self.forest
        if lo == hi:
            return self._emit(int(f.true[row] if labels[lo] else f.false[row]), depth + 1)
        mid = (lo + hi) // 2
        node = self._new(int(f.feature[row]), bounds[mid])
        left = self._emit_regions(row, bounds, labels, nan_label, lo, mid, depth + 1)
        right = self._emit_regions(row, bounds, labels, nan_label, mid + 1, hi, depth + 1)
        return self._link(node, left, right, left if nan_label in labels[lo : mid + 1] else right)

    def _regions(self, row: int) -> tuple[list[float], list[bool], bool]:
        """Cut the feature's line into regions (−inf, b0], (b0, b1], … labelled true/false branch."""
        f, mode = self.forest, self.forest.mode[row]
        t = float(f.split[row])
        if np.isnan(t):
            raise not_applicable("a split threshold is NaN")
        if mode in ("BRANCH_LEQ", "BRANCH_GT"):
            bounds, labels = [_below(t, f.compare, False)], [True, False]
        elif mode in ("BRANCH_LT", "BRANCH_GTE"):
            bounds, labels = [_below(t, f.compare, True)], [True, False]
        elif mode in ("BRANCH_EQ", "BRANCH_NEQ", "BRANCH_MEMBER"):
            values = sorted(set(f.members[row])) if mode == "BRANCH_MEMBER" else [t]
            bounds, labels = [], [False]
            for v in values:  # x == v  ⇔  prev(v) < x ≤ v
                bounds += [_below(v, f.compare, True), _below(v, f.compare, False)]
                labels += [True, False]
        else:
            raise not_applicable(f"node mode {mode} is not supported")
        if mode in ("BRANCH_GT", "BRANCH_GTE", "BRANCH_NEQ"):
            labels = [not label for label in labels]
        nan_label = True if mode == "BRANCH_NEQ" else bool(f.nan_true[row])
        return (*_simplify(bounds, labels), nan_label)


def _below(t: float, dtype: type[np.floating[Any]], strict: bool) -> float:
    """The largest ``dtype`` value ≤ t (``strict``: < t), so ``x ≤ it`` ⇔ ``x ≤ t`` (``x < t``)."""
    v = dtype(t)
    if float(v) > t or (strict and float(v) == t):
        v = np.nextafter(v, dtype(-np.inf))
    return float(v)


def _simplify(bounds: list[float], labels: list[bool]) -> tuple[list[float], list[bool]]:
    """Drop empty regions, then merge neighbours with the same label."""
    kept: list[float] = []
    kept_labels = [labels[0]]
    for b, label in zip(bounds, labels[1:], strict=True):
        if kept and b <= kept[-1]:
            kept_labels[-1] = label  # the region (kept[-1], b] is empty
            continue
        kept.append(b)
        kept_labels.append(label)
    out: list[float] = []
    out_labels = [kept_labels[0]]
    for b, label in zip(kept, kept_labels[1:], strict=True):
        if label != out_labels[-1]:
            out.append(b)
            out_labels.append(label)
    return out, out_labels
