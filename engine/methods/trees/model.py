"""Tree ensembles in shap's layout: "x ≤ t goes left" trees, and how they score rows.

:mod:`engine.methods.trees.reader` reads them from the ``ai.onnx.ml`` tree nodes of an
ONNX graph, and :mod:`engine.methods.trees.splits` rewrites the graph's branch modes
into ≤ tests. ONNX stores no node covers; they come from the background.

Routing reproduces onnxruntime: rows go through the graph's casts (a float32
input makes float32 features), thresholds are compared in the ensemble's
input type, and each comparison becomes shap's "x ≤ τ goes left" on those
values (see :mod:`engine.methods.trees.splits`).

Output conventions, measured on onnxruntime 1.32, ``s`` being the summed
leaf weights plus ``base_values``: every output's margin is ``s_k``, except
binary classifiers that store one weight column, whose margins are
``(−s, s)``. onnxruntime writes ``(σ(−s), σ(s))`` for them under LOGISTIC,
``(1 − s, s)`` under NONE when every weight is ≥ 0 (random forests) and
``(−s, s)`` under NONE otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.arrays import FloatArray, IntArray
from engine.errors import InvalidRequest


@dataclass(frozen=True)
class Tree:
    """One tree in shap's layout; node 0 is the root and ``x[feature] <= threshold`` goes left.

    Attributes:
        left: Left child per node, ``-1`` at leaves.
        right: Right child per node, ``-1`` at leaves.
        default: Child a NaN feature takes, ``-1`` at leaves.
        feature: Split feature; ``0`` at leaves, because shap's C++ reads
            ``x[feature]`` of a leaf before noticing it is one.
        threshold: Split value, in the routing type (see ``TreeEnsemble.casts``).
        value: ``(nodes, n_scores)`` leaf weights, zero at inner nodes.
    """

    left: IntArray
    right: IntArray
    default: IntArray
    feature: IntArray
    threshold: FloatArray
    value: FloatArray

    def node_counts(self, Z: FloatArray) -> FloatArray:
        """Count the rows of routed ``Z`` (see ``TreeEnsemble.prepare``) passing each node."""
        counts = np.zeros(len(self.left))
        node = np.zeros(len(Z), dtype=np.int64)
        rows = np.arange(len(Z))
        while len(rows):
            np.add.at(counts, node[rows], 1.0)
            rows = rows[self.left[node[rows]] >= 0]
            node[rows] = self._step(Z[rows], node[rows])
        return counts

    def leaves(self, Z: FloatArray) -> IntArray:
        """Return the leaf each row of routed ``Z`` ends in."""
        node = np.zeros(len(Z), dtype=np.int64)
        rows = np.arange(len(Z))
        while len(rows := rows[self.left[node[rows]] >= 0]):
            node[rows] = self._step(Z[rows], node[rows])
        return node

    def _step(self, Z: FloatArray, node: IntArray) -> IntArray:
        x = Z[np.arange(len(Z)), self.feature[node]]
        nxt = np.where(x <= self.threshold[node], self.left[node], self.right[node])
        return np.where(np.isnan(x), self.default[node], nxt)


@dataclass(frozen=True)
class TreeEnsemble:
    """An ensemble as onnxruntime evaluates it: margins ``A · s + c``, then the post-transform.

    Attributes:
        trees: The trees with at least one split (constant trees are in ``base``).
        base: ``(n_scores,)`` base_values plus the constant trees.
        n_features: Width of the model input (``0`` when the graph leaves it open).
        casts: The numpy types a row is cast to, in order, before routing.
        post_transform: ``NONE``, ``LOGISTIC`` or ``SOFTMAX``.
        matrix: ``A``, ``(n_outputs, n_scores)``, outputs' margins from the scores.
        offset: ``c``, ``(n_outputs,)``.
        is_classifier: The graph holds a classifier (it has a probability output).
        labels: Class labels, or target indices.
    """

    trees: tuple[Tree, ...]
    base: FloatArray
    n_features: int
    casts: tuple[type[np.floating[Any]], ...]
    post_transform: str
    matrix: FloatArray
    offset: FloatArray
    is_classifier: bool
    labels: tuple[str, ...] = field(default=())

    @property
    def n_outputs(self) -> int:
        """Number of model outputs (classes or targets)."""
        return int(self.matrix.shape[0])

    @property
    def single_column_binary(self) -> bool:
        """A binary classifier whose trees score class 1 only (margins ``(−s, s)``)."""
        return self.matrix.shape == (2, 1)

    def prepare(self, X: FloatArray) -> FloatArray:
        """Cast raw rows the way the graph does before the trees; float64 holding those values."""
        Z = np.asarray(X, dtype=np.float64)
        for dtype in self.casts:
            Z = Z.astype(dtype)
        return Z.astype(np.float64)

    def scores(self, Z: FloatArray) -> FloatArray:
        """Summed leaf weights plus base, ``(n, n_scores)``, for prepared rows ``Z``."""
        out = np.tile(self.base, (len(Z), 1))
        for tree in self.trees:
            out += tree.value[tree.leaves(Z)]
        return out

    def margins(self, Z: FloatArray) -> FloatArray:
        """Each output's margin, ``(n, n_outputs)``, for prepared rows ``Z``."""
        return self.scores(Z) @ self.matrix.T + self.offset

    def outputs(self, Z: FloatArray) -> FloatArray:
        """The model's own output (probabilities, or the regression) for prepared rows ``Z``."""
        return transform(self.margins(Z), self.post_transform)


def transform(margins: FloatArray, post_transform: str) -> FloatArray:
    """Apply an ONNX post-transform (``NONE``, ``LOGISTIC``, ``SOFTMAX``) row-wise."""
    if post_transform == "LOGISTIC":
        out: FloatArray = 1.0 / (1.0 + np.exp(-margins))
        return out
    if post_transform == "SOFTMAX":
        e = np.exp(margins - margins.max(axis=1, keepdims=True))
        return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)
    return margins


def not_applicable(detail: str) -> InvalidRequest:
    """The error for a model ``tree_shap`` cannot explain, naming the fallback."""
    return InvalidRequest(
        f"tree_shap does not apply: {detail}; use exact, permutation or kernel_shap",
        code="method_not_applicable",
        field="method",
    )
