"""Reading a tree ensemble out of an ONNX graph.

A tree model here is: one float/double graph input → ``Cast``/``Identity``*
→ one ``ai.onnx.ml`` ``TreeEnsembleClassifier``/``TreeEnsembleRegressor``
(or the opset-5 ``TreeEnsemble``) → ``ZipMap``/``Normalizer``/``Cast``/
``Identity``*. The ensemble node's attributes become a ``Forest`` (node
tables), which :mod:`engine.methods.trees.splits` rewrites into ``Tree``s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from engine.arrays import FloatArray, IntArray
from engine.errors import InvalidRequest
from engine.methods.trees.model import TreeEnsemble, not_applicable
from engine.methods.trees.splits import Forest

_LEGACY_OPS = ("TreeEnsembleClassifier", "TreeEnsembleRegressor")
_V5_MODES = ("BRANCH_LEQ", "BRANCH_LT", "BRANCH_GTE", "BRANCH_GT", "BRANCH_EQ", "BRANCH_NEQ", "BRANCH_MEMBER")
_V5_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_V5_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
_DTYPES: dict[int, type[np.floating[Any]]] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}
_AFTER_OPS = ("ZipMap", "Normalizer", "Cast", "Identity")


def read_model(onnx_bytes: bytes) -> TreeEnsemble:
    """Read the tree ensemble of a serialized model (:func:`read_ensemble` wraps the errors).

    Raises:
        InvalidRequest: The graph is not a supported tree ensemble (``method_not_applicable``).
    """
    return _read(onnx.load_from_string(onnx_bytes).graph)


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
        return read_model(onnx_bytes)
    except InvalidRequest:
        raise
    except Exception as exc:
        raise not_applicable(f"the tree ensemble cannot be read ({type(exc).__name__}: {exc})") from exc


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


def _read_legacy(node: onnx.NodeProto) -> Forest:
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
    forest = Forest(
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


def _classifier_layout(forest: Forest, ids: IntArray, weights: FloatArray, base: FloatArray) -> int:
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


def _read_v5(node: onnx.NodeProto) -> Forest:
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
    return Forest(
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
