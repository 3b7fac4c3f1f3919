"""Tree ensembles read from ONNX graphs, rewritten as "x ≤ t goes left" trees.

A tree model here is: one float/double graph input → ``Cast``/``Identity``*
→ one ``ai.onnx.ml`` ``TreeEnsembleClassifier``/``TreeEnsembleRegressor``
(or the opset-5 ``TreeEnsemble``) → ``ZipMap``/``Normalizer``/``Cast``/
``Identity``*. ONNX stores no node covers; they come from the background.

Routing reproduces onnxruntime: rows go through the graph's casts (a float32
input makes float32 features), thresholds are compared in the ensemble's
input type, and each comparison becomes shap's "x ≤ τ goes left" on those
values: LEQ → (true, t), LT → (true, prev(t)), GT → (false, t), GTE →
(false, prev(t)), prev being the next value down in that type. EQ, NEQ and
MEMBER become intervals (prev(v), v] cut by ≤ nodes; a subtree an interval
reaches twice is copied.

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
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from engine.errors import InvalidRequest

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_LEGACY_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_V5_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "BRANCH_MEMBER")
_V5_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_V5_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
_DTYPES: dict[int, type[np.floating[Any]]] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
_AFTER_OPS = ("ZipMap", "Normalizer", "Cast", "Identity")
MAX_NODES = 2_000_000
MAX_DEPTH = 400


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


def is_tree_ensemble(onnx_bytes: bytes) -> bool:
    """Tell whether ``tree_shap`` can read the model (used by ``auto``)."""
    return load_ensemble(onnx_bytes) is not None


def load_ensemble(onnx_bytes: bytes) -> TreeEnsemble | None:
    """Read the tree ensemble of a model, or ``None`` when it is not one we support."""
    try:
        return read_ensemble(onnx_bytes)
    except Exception:
        return None


def read_ensemble(onnx_bytes: bytes) -> TreeEnsemble:
    """Read the tree ensemble of a model.

    Args:
        onnx_bytes: A serialized ONNX model.

    Returns:
        The ensemble, rewritten for shap.

    Raises:
        InvalidRequest: The graph is not a supported tree ensemble
            (``method_not_applicable``, saying why).
    """
    try:
        return _read(onnx.load_from_string(onnx_bytes).graph)
    except InvalidRequest:
        raise
    except Exception as exc:
        raise not_applicable(f"the tree ensemble cannot be read ({type(exc).__name__}: {exc})") from exc


def not_applicable(detail: str) -> InvalidRequest:
    """The error for a model ``tree_shap`` cannot explain, naming the fallback."""
    return InvalidRequest(
        f"tree_shap does not apply: {detail}; use exact, permutation or kernel_shap",
        code="method_not_applicable",
        field="method",
    )


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        out[a.name] = value
    return out


def _read(graph: onnx.GraphProto) -> TreeEnsemble:
    constants = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in constants]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type not in _DTYPES:
        raise not_applicable("the model needs one float or double input tensor")
    dims = inputs[0].type.tensor_type.shape.dim
    n_features = dims[-1].dim_value if len(dims) == 2 else -1
    if n_features < 0:
        raise not_applicable("the model input is not a 2-D feature matrix")
    chain: dict[str, tuple[type[np.floating[Any]], ...]] = {
        inputs[0].name: (_DTYPES[inputs[0].type.tensor_type.elem_type],)
    }
    ensemble: tuple[onnx.NodeProto, tuple[type[np.floating[Any]], ...]] | None = None
    score_path: set[str] = set()
    after: set[str] = set()
    normalizer: str | None = None
    for node in graph.node:
        attrs = _attributes(node)
        source = chain.get(node.input[0]) if node.input else None
        if source is not None and node.op_type in ("Cast", "Identity") and ensemble is None:
            if node.op_type == "Cast" and attrs["to"] not in _DTYPES:
                raise not_applicable("a Cast before the trees leaves floating point")
            chain[node.output[0]] = source + ((_DTYPES[attrs["to"]],) if node.op_type == "Cast" else ())
        elif (
            source is not None
            and node.domain == "ai.onnx.ml"
            and ensemble is None
            and (node.op_type in _LEGACY_OPS or node.op_type == "TreeEnsemble")
        ):
            ensemble = (node, source)
            after.update(node.output)
            score_path.add(node.output[1] if node.op_type == "TreeEnsembleClassifier" else node.output[0])
        elif node.op_type in _AFTER_OPS and node.input and all(t in after for t in node.input):
            if node.op_type == "Normalizer" and node.input[0] in score_path:
                normalizer = str(attrs.get("norm", "MAX"))
            if node.input[0] in score_path:
                score_path.update(node.output)
            after.update(node.output)
        else:
            raise not_applicable(f"the graph has a {node.op_type} node outside Cast/Identity → trees → post-processing")
    if ensemble is None:
        raise not_applicable("the graph has no TreeEnsemble node")
    node, casts = ensemble
    forest = _read_v5(node) if node.op_type == "TreeEnsemble" else _read_legacy(node)
    return forest.build(n_features, casts, normalizer)


@dataclass
class _Forest:
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
        if self.post_transform not in ("NONE", "LOGISTIC", "SOFTMAX"):
            raise not_applicable(f"post_transform {self.post_transform} is not supported")
        self.compare = casts[-1]
        builder = _Builder(self)
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


def _floats(attrs: dict[str, Any], name: str, default: Any = None) -> FloatArray:
    """A float attribute, preferring its ``_as_tensor`` (float64-capable) form."""
    value = attrs.get(name + "_as_tensor", attrs.get(name, default))
    if value is None:
        raise not_applicable(f"attribute {name} is missing")
    return np.asarray(value, dtype=np.float64).ravel()


def _ints(attrs: dict[str, Any], name: str, default: Any = None) -> IntArray:
    value = attrs.get(name, default)
    if value is None:
        raise not_applicable(f"attribute {name} is missing")
    return np.asarray(value, dtype=np.int64).ravel()


def _read_legacy(node: onnx.NodeProto) -> _Forest:
    """Read ``TreeEnsembleClassifier``/``TreeEnsembleRegressor`` (ai.onnx.ml ≤ 3)."""
    attrs = _attributes(node)
    classifier = node.op_type == "TreeEnsembleClassifier"
    trees, ids = _ints(attrs, "nodes_treeids"), _ints(attrs, "nodes_nodeids")
    row = {(int(t), int(i)): r for r, (t, i) in enumerate(zip(trees, ids, strict=True))}
    modes = [str(m) for m in attrs["nodes_modes"]]
    is_leaf = np.array([m == "LEAF" for m in modes])
    true = np.array(
        [row.get((int(t), int(c)), -1) for t, c in zip(trees, _ints(attrs, "nodes_truenodeids"), strict=True)]
    )
    false = np.array(
        [row.get((int(t), int(c)), -1) for t, c in zip(trees, _ints(attrs, "nodes_falsenodeids"), strict=True)]
    )
    if ((true < 0) | (false < 0))[~is_leaf].any():
        raise not_applicable("a node points to a child that does not exist")
    children = set(true[~is_leaf]) | set(false[~is_leaf])
    roots = [r for r in range(len(modes)) if r not in children]
    if len(roots) != len(set(trees.tolist())):
        raise not_applicable("a tree does not have exactly one root")
    prefix = "class_" if classifier else "target_"
    w_trees, w_nodes = _ints(attrs, prefix + "treeids"), _ints(attrs, prefix + "nodeids")
    w_rows = np.array([row[(int(t), int(i))] for t, i in zip(w_trees, w_nodes, strict=True)], dtype=np.int64)
    w_ids, w = _ints(attrs, prefix + "ids"), _floats(attrs, prefix + "weights")
    if not is_leaf[w_rows].all():
        raise not_applicable("a weight sits on an inner node")
    base = _floats(attrs, "base_values", [])
    forest = _Forest(
        roots=roots,
        is_leaf=is_leaf,
        mode=modes,
        feature=_ints(attrs, "nodes_featureids"),
        split=_floats(attrs, "nodes_values"),
        members={},
        true=np.where(is_leaf, 0, true),
        false=np.where(is_leaf, 0, false),
        nan_true=_ints(attrs, "nodes_missing_value_tracks_true", [0] * len(modes)).astype(bool),
        weights=np.zeros(0),
        post_transform=str(attrs.get("post_transform", "NONE")),
        is_classifier=classifier,
    )
    if classifier:
        labels = attrs.get("classlabels_strings") or attrs.get("classlabels_int64s") or []
        forest.labels = tuple(str(v) for v in labels)
        n_scores = _classifier_layout(forest, w_ids, w, base)
    else:
        n_scores = int(attrs.get("n_targets", 1))
        forest.labels = tuple(str(i) for i in range(n_scores))
        forest.matrix, forest.offset = np.eye(n_scores), np.zeros(n_scores)
        forest.base = _base(base, n_scores, n_scores == 1)
        aggregate = str(attrs.get("aggregate_function", "SUM"))
        if aggregate not in ("SUM", "AVERAGE"):
            raise not_applicable(f"aggregate_function {aggregate} is not additive")
        if aggregate == "AVERAGE":
            w = w / len(roots)  # onnxruntime divides by every tree, before adding base_values
        if forest.post_transform != "NONE":
            raise not_applicable(f"a regressor with post_transform {forest.post_transform}")
    if (w_ids < 0).any() or (w_ids >= n_scores).any():
        raise not_applicable("a weight names a class or target out of range")
    forest.weights = np.zeros((len(modes), n_scores))
    np.add.at(forest.weights, (w_rows, w_ids), w)
    return forest


def _base(base: FloatArray, n: int, single_allowed: bool) -> FloatArray:
    if len(base) == 0:
        return np.zeros(n)
    if len(base) == n or (single_allowed and len(base) == 1):
        return np.resize(base, n)
    raise not_applicable(f"{len(base)} base_values for {n} scores")


def _classifier_layout(forest: _Forest, ids: IntArray, weights: FloatArray, base: FloatArray) -> int:
    """Set the classifier's score columns, base and margin map; return the number of columns."""
    n_classes = len(forest.labels)
    if n_classes < 2:
        raise not_applicable("a classifier with fewer than two classes")
    if n_classes == 2 and set(ids.tolist()) <= {0}:
        # One weight column: onnxruntime treats its score s as class 1's.
        if len(base) > 1 or forest.post_transform not in ("NONE", "LOGISTIC"):
            raise not_applicable("a one-column binary classifier with two base_values or a softmax")
        forest.base = _base(base, 1, True)
        forest.matrix = np.array([[-1.0], [1.0]])
        positive = forest.post_transform == "NONE" and bool((weights >= 0).all())
        forest.offset = np.array([1.0, 0.0]) if positive else np.zeros(2)
        return 1
    if n_classes == 2 and len(base) and not (len(base) == 1 and 0 in ids):
        # onnxruntime 1.32 writes (−(b1 + s0), b1 + s0) for two base_values, and drops a
        # single base_value when class 0 has no weight.
        raise not_applicable("a two-column binary classifier with these base_values")
    if len(base) not in (0, n_classes) and n_classes > 2:
        raise not_applicable(f"{len(base)} base_values for {n_classes} classes")
    forest.base = np.concatenate([base, np.zeros(n_classes - len(base))])
    forest.matrix, forest.offset = np.eye(n_classes), np.zeros(n_classes)
    return n_classes


def _read_v5(node: onnx.NodeProto) -> _Forest:
    """Read the opset-5 ``TreeEnsemble`` (inner nodes and leaves in separate tables)."""
    attrs = _attributes(node)
    modes = [_V5_MODES[int(m)] for m in np.asarray(attrs["nodes_modes"]).ravel()]
    n_nodes = len(modes)
    leaf_targets, leaf_weights = _ints(attrs, "leaf_targetids"), _floats(attrs, "leaf_weights")
    n_leaves, n_targets = len(leaf_targets), int(attrs.get("n_targets", 1))
    aggregate = _V5_AGGREGATES[int(attrs.get("aggregate_function", 1))]
    if aggregate not in ("SUM", "AVERAGE"):
        raise not_applicable(f"aggregate_function {aggregate} is not additive")
    roots = _ints(attrs, "tree_roots").tolist()
    if aggregate == "AVERAGE":
        leaf_weights = leaf_weights / len(roots)
    if (leaf_targets < 0).any() or (leaf_targets >= n_targets).any():
        raise not_applicable("a leaf names a target out of range")
    weights = np.zeros((n_nodes + n_leaves, n_targets))
    weights[n_nodes + np.arange(n_leaves), leaf_targets] = leaf_weights
    true = _ints(attrs, "nodes_truenodeids") + n_nodes * _ints(attrs, "nodes_trueleafs")
    false = _ints(attrs, "nodes_falsenodeids") + n_nodes * _ints(attrs, "nodes_falseleafs")
    member_values = _floats(attrs, "membership_values", [])
    cuts = np.flatnonzero(np.isnan(member_values))
    groups = np.split(member_values, cuts)
    members_at = [i for i, m in enumerate(modes) if m == "BRANCH_MEMBER"]
    members = {r: [float(v) for v in g if not np.isnan(v)] for r, g in zip(members_at, groups, strict=False)}
    if len(members) != len(members_at):
        raise not_applicable("membership_values do not cover every BRANCH_MEMBER node")
    post = _V5_TRANSFORMS[int(attrs.get("post_transform", 0))]
    if post != "NONE":
        # onnxruntime 1.32 ignores it for one target and swaps SOFTMAX/LOGISTIC for several.
        raise not_applicable(f"a TreeEnsemble with post_transform {post}")
    return _Forest(
        roots=roots,
        is_leaf=np.arange(n_nodes + n_leaves) >= n_nodes,
        mode=modes + ["LEAF"] * n_leaves,
        feature=np.concatenate([_ints(attrs, "nodes_featureids"), np.zeros(n_leaves, np.int64)]),
        split=np.concatenate([_floats(attrs, "nodes_splits"), np.zeros(n_leaves)]),
        members=members,
        true=np.concatenate([true, np.zeros(n_leaves, np.int64)]),
        false=np.concatenate([false, np.zeros(n_leaves, np.int64)]),
        nan_true=np.concatenate(
            [_ints(attrs, "nodes_missing_value_tracks_true", [0] * n_nodes).astype(bool), np.zeros(n_leaves, bool)]
        ),
        weights=weights,
        post_transform=post,
        matrix=np.eye(n_targets),
        offset=np.zeros(n_targets),
        base=np.zeros(n_targets),
        is_classifier=False,
        labels=tuple(str(i) for i in range(n_targets)),
    )


class _Builder:
    """Emit the trees of a ``_Forest`` in shap's layout, splitting every test into ≤ nodes."""

    def __init__(self, forest: _Forest) -> None:
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
