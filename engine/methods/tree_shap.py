"""Exact interventional TreeSHAP on the trees of an ONNX tree ensemble.

The trees come from :mod:`engine.methods.trees.model` (routing identical to onnxruntime's)
and are handed to ``shap.TreeExplainer`` as its dict format, with the
background as an ``Independent`` masker holding *every* background row (a
bare array is silently subsampled to 100 rows by shap). Node covers are
recomputed from the background, and every explainer gets freshly built
dicts because shap overwrites ``node_sample_weight`` in place.

Output spaces (``info["output_space"]``):

* ``margin`` (default): the raw score of each output (see :mod:`engine.methods.trees.model`
  for the binary ``(−s, s)`` convention); exact Shapley values of the
  interventional game on the margin.
* ``probability``: the model's probabilities. Under NONE (random forests)
  they are the margins. Under LOGISTIC it is shap's
  ``model_output="probability"``: per background row, the margin
  attributions are rescaled by ``(σ(m_x) − σ(m_r)) / (m_x − m_r)``, so they
  add up exactly but are not the Shapley values of the probability game.
  Under SOFTMAX (which shap does not handle) each background row's margin
  attributions are mapped through the Shapley split of ``p(x) − p(r)`` over
  the K margins, which reduces to shap's rescaling for one margin.

The model's outputs computed from the trees are checked against
``task.f`` (onnxruntime) before anything is explained, on the rows explained
and at most :data:`VERIFY_BACKGROUND_ROWS` background rows.

Parsed ensembles are kept in a small per-process LRU keyed by the SHA-256 of
the ONNX bytes (:data:`CACHED_ENSEMBLES` entries, arrays made read-only), so
a warm worker does not re-read the graph for every request.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import shap

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background
from engine.methods.trees.model import Tree, TreeEnsemble, not_applicable, transform
from engine.methods.trees.reader import read_ensemble

MAX_SOFTMAX_CLASSES = 12
_EPS32 = float(np.finfo(np.float32).eps)

CACHED_ENSEMBLES = 8
"""Parsed ensembles kept per process (least recently used dropped first)."""

VERIFY_BACKGROUND_ROWS = 32
"""Background rows (evenly spaced) checked against onnxruntime besides the explained rows."""

_cache: OrderedDict[str, TreeEnsemble] = OrderedDict()
_cache_lock = threading.Lock()


def cached_ensemble(onnx_bytes: bytes) -> TreeEnsemble:
    """:func:`engine.methods.trees.reader.read_ensemble` through the per-process LRU keyed by the bytes' SHA-256.

    Raises:
        InvalidRequest: As ``read_ensemble`` (failures are not cached).
    """
    key = hashlib.sha256(onnx_bytes).hexdigest()
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    ensemble = _read_only(read_ensemble(onnx_bytes))
    with _cache_lock:
        _cache[key] = ensemble
        _cache.move_to_end(key)
        while len(_cache) > CACHED_ENSEMBLES:
            _cache.popitem(last=False)
    return ensemble


def _read_only(ensemble: TreeEnsemble) -> TreeEnsemble:
    """Freeze the ensemble's arrays: a cached ensemble is shared by every later request."""
    arrays: list[np.ndarray[Any, Any]] = [ensemble.base, ensemble.matrix, ensemble.offset]
    for tree in ensemble.trees:
        arrays += [tree.left, tree.right, tree.default, tree.feature, tree.threshold, tree.value]
    for array in arrays:
        array.flags.writeable = False
    return ensemble


class TreeShap:
    """Exact interventional TreeSHAP of an ONNX tree ensemble (no standard errors)."""

    name = "tree_shap"

    def explain(self, task: ExplainTask) -> Attributions:
        """Explain every row for every output.

        Raises:
            InvalidRequest: The model is not a supported tree ensemble, or
                does not match the card (``method_not_applicable``); a
                probability was asked of a regressor (``invalid_parameter``);
                no background.
            ExplanationFailed: The trees do not reproduce onnxruntime's
                output, or shap failed.
        """
        require_background(task, self.name)
        if task.onnx_model is None:
            raise not_applicable("the task carries no ONNX graph")
        ensemble = cached_ensemble(task.onnx_model)
        space = str(task.params.get("output_space", "margin"))
        _check_shapes(task, ensemble)
        if space not in ("margin", "probability") or (space == "probability" and not ensemble.is_classifier):
            raise InvalidRequest(
                f"output_space {space!r} does not apply: 'margin', or 'probability' for a classifier",
                code="invalid_parameter",
                field="parameters.output_space",
            )
        with library_failures(self.name):
            Z, B = ensemble.prepare(task.X), ensemble.prepare(task.background)
            sample = np.unique(np.linspace(0, len(B) - 1, min(len(B), VERIFY_BACKGROUND_ROWS)).astype(np.intp))
            _verify(task, ensemble, np.vstack([Z, B[sample]]), np.vstack([task.X, task.background[sample]]))
            if space == "margin" or ensemble.post_transform == "NONE":
                values, base = _margin_values(ensemble, Z, B)
                output = ensemble.margins(Z) if space == "margin" else ensemble.outputs(Z)
            elif ensemble.post_transform == "LOGISTIC":
                values, base = _logistic_values(ensemble, Z, B)
                output = ensemble.outputs(Z)
            else:
                values, base = _softmax_values(ensemble, Z, B)
                output = ensemble.outputs(Z)
            _check_additivity(ensemble, values, base, output)
        return Attributions(
            base_values=np.tile(base, (len(Z), 1)),
            values=values,
            output_values=output,
            quality=[{"converged": True} for _ in range(len(Z))],
            info={"output_space": space},
        )


def shap_model(ensemble: TreeEnsemble, background: FloatArray, *, log_odds: bool = False) -> dict[str, Any]:
    """Build shap's dict model of the ensemble (fresh arrays: shap writes into them).

    Args:
        ensemble: The ensemble.
        background: Prepared background rows, for the node covers.
        log_odds: Declare the scores log-odds, so that shap's
            ``model_output="probability"`` applies the logistic.

    Returns:
        ``{"trees": [...], "base_offset": ...}`` for ``shap.TreeExplainer``.
    """
    trees = []
    for tree in ensemble.trees:
        covers = tree.node_counts(background)
        trees.append(
            {
                "children_left": tree.left.astype(np.int32),
                "children_right": tree.right.astype(np.int32),
                "children_default": tree.default.astype(np.int32),
                "features": tree.feature.astype(np.int32),
                "thresholds": tree.threshold.astype(np.float64),
                "values": _inner_values(tree, covers),
                "node_sample_weight": covers,
            }
        )
    return {
        "trees": trees,
        "base_offset": ensemble.base.copy(),
        "input_dtype": np.float64,  # rows arrive already cast the way the graph casts them
        "internal_dtype": np.float64,
        "tree_output": "log_odds" if log_odds else "raw_value",
    }


def _inner_values(tree: Tree, covers: FloatArray) -> FloatArray:
    """Fill inner nodes with the cover-weighted mean of their children (leaves keep theirs)."""
    values = tree.value.copy()
    for node in range(len(values) - 1, -1, -1):  # children come after their parent
        left, right = tree.left[node], tree.right[node]
        if left >= 0:
            total = covers[left] + covers[right]
            w = 0.5 if total == 0 else covers[left] / total
            values[node] = w * values[left] + (1 - w) * values[right]
    return values


def _fresh(model: dict[str, Any]) -> dict[str, Any]:
    """A copy of a shap dict model whose arrays shap may overwrite (it fills in covers in place)."""
    trees = [{key: array.copy() for key, array in tree.items()} for tree in model["trees"]]
    return {**model, "trees": trees, "base_offset": model["base_offset"].copy()}


def _tree_shap(
    ensemble: TreeEnsemble, model: dict[str, Any], Z: FloatArray, B: FloatArray, output: str
) -> tuple[FloatArray, FloatArray]:
    """Run shap: ``(n, d, n_scores)`` attributions and the ``(n_scores,)`` expected value."""
    if not ensemble.trees:
        expected = transform(ensemble.base[None, :], "LOGISTIC")[0] if output == "probability" else ensemble.base
        return np.zeros((len(Z), Z.shape[1], len(ensemble.base))), expected
    explainer = shap.TreeExplainer(
        _fresh(model),
        data=shap.maskers.Independent(B, max_samples=len(B)),
        feature_perturbation="interventional",
        model_output=output,
    )
    phi = np.asarray(explainer.shap_values(Z, check_additivity=False), dtype=np.float64)
    expected = np.atleast_1d(np.asarray(explainer.expected_value, dtype=np.float64))
    return phi.reshape(len(Z), Z.shape[1], -1), expected


def _margin_values(ensemble: TreeEnsemble, Z: FloatArray, B: FloatArray) -> tuple[FloatArray, FloatArray]:
    phi, expected = _tree_shap(ensemble, shap_model(ensemble, B), Z, B, "raw")
    return phi @ ensemble.matrix.T, ensemble.matrix @ expected + ensemble.offset


def _logistic_values(ensemble: TreeEnsemble, Z: FloatArray, B: FloatArray) -> tuple[FloatArray, FloatArray]:
    phi, expected = _tree_shap(ensemble, shap_model(ensemble, B, log_odds=True), Z, B, "probability")
    if ensemble.single_column_binary:
        # σ(−s) = 1 − σ(s): class 0 gets the opposite attributions and 1 − the base.
        return np.concatenate([-phi, phi], axis=2), np.array([1 - expected[0], expected[0]])
    return phi, expected


def _softmax_values(ensemble: TreeEnsemble, Z: FloatArray, B: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Per background row, map margin attributions to probability ones through ``_softmax_split``."""
    k = ensemble.n_outputs
    if k > MAX_SOFTMAX_CLASSES:
        raise not_applicable(f"output_space 'probability' handles at most {MAX_SOFTMAX_CLASSES} softmax classes")
    m_x, m_b = ensemble.margins(Z), ensemble.margins(B)
    masks = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(bool)
    model = shap_model(ensemble, B)  # built once: shap recomputes the covers for each reference row
    values = np.zeros((len(Z), Z.shape[1], k))
    for j in range(len(B)):
        phi, _ = _tree_shap(ensemble, model, Z, B[j : j + 1], "raw")
        values += np.einsum("nkc,ndc->ndk", _softmax_split(m_x, m_b[j], masks), phi)
    return values / len(B), transform(m_b, "SOFTMAX").mean(axis=0)


def _softmax_split(m_x: FloatArray, m_r: FloatArray, masks: Any) -> FloatArray:
    """``W`` with ``W · (m_x − m_r) = p(x) − p(r)``: the Shapley split over the margins, per unit margin.

    Where a margin barely moves (its Shapley share is ~0 but its feature
    attributions may still cancel out), the softmax Jacobian at the
    midpoint stands in; it agrees with the split to first order.
    """
    n, k = m_x.shape
    delta = m_x - m_r
    points = m_r + masks[None, :, :] * delta[:, None, :]
    p = transform(points.reshape(-1, k), "SOFTMAX").reshape(n, len(masks), k)
    sizes = masks.sum(axis=1)
    split = np.zeros((n, k, k))
    for c in range(k):
        without = np.flatnonzero(~masks[:, c])
        weight = np.array([math.factorial(s) * math.factorial(k - s - 1) for s in sizes[without]]) / math.factorial(k)
        split[:, :, c] = np.einsum("s,nsk->nk", weight, p[:, without + (1 << c)] - p[:, without])
    mid = transform(m_r + delta / 2, "SOFTMAX")
    jacobian = mid[:, :, None] * (np.eye(k)[None] - mid[:, None, :])
    small = np.abs(delta) < 1e-6
    safe = np.where(small, 1.0, delta)
    return np.where(small[:, None, :], jacobian, split / safe[:, None, :])


def _check_shapes(task: ExplainTask, ensemble: TreeEnsemble) -> None:
    d = task.X.shape[1]
    if ensemble.n_features and ensemble.n_features != d:
        raise not_applicable(f"the graph reads {ensemble.n_features} features, the model card has {d}")
    if any(int(t.feature.max()) >= d for t in ensemble.trees):
        raise not_applicable(f"a split uses a feature beyond the card's {d}")
    if ensemble.n_outputs != len(task.output_names):
        raise not_applicable(f"the graph has {ensemble.n_outputs} outputs, the model card {len(task.output_names)}")


def _scale(ensemble: TreeEnsemble) -> float:
    """A bound on any score's magnitude, for float32 tolerances."""
    return float(np.abs(ensemble.base).max() + sum(np.abs(t.value).max() for t in ensemble.trees))


def _verify(task: ExplainTask, ensemble: TreeEnsemble, Z: FloatArray, raw: FloatArray) -> None:
    """Raise unless the trees reproduce ``task.f`` (onnxruntime sums in float32, hence the tolerance)."""
    expected = ensemble.outputs(Z)
    actual = np.asarray(task.f(raw), dtype=np.float64).reshape(len(raw), -1)
    if actual.shape != expected.shape:
        raise not_applicable(f"the model returns {actual.shape[1]} outputs, the trees {expected.shape[1]}")
    scale = (1 + _scale(ensemble)) * float(np.abs(ensemble.matrix).sum(axis=1).max() + 1)
    tolerance = (1e-5 + 2 * len(ensemble.trees) * _EPS32) * scale
    worst = float(np.abs(expected - actual).max())
    if not worst <= tolerance:
        raise ExplanationFailed(
            f"tree_shap: the trees read from the graph differ from onnxruntime's output by {worst:.3g} "
            f"(tolerance {tolerance:.3g}); use exact, permutation or kernel_shap"
        )


def _check_additivity(ensemble: TreeEnsemble, values: FloatArray, base: FloatArray, output: FloatArray) -> None:
    gap = float(np.abs(base[None, :] + values.sum(axis=1) - output).max()) if len(output) else 0.0
    if not gap <= 1e-6 * (1 + _scale(ensemble)):
        raise ExplanationFailed(f"tree_shap: attributions miss additivity by {gap:.3g}")
