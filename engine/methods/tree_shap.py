"""Exact interventional TreeSHAP on the trees of an ONNX tree ensemble, per request only the rows' work.

The trees come from :mod:`engine.methods.trees.model` (routing identical to
onnxruntime's). The values are computed by our vectorised interventional
TreeSHAP (:mod:`engine.methods.trees.fast`), the same numbers as
``shap.TreeExplainer`` with an ``Independent`` masker holding every
background row. Everything that depends only on the model and the background
(the leaves' paths, which tests each background row passes, the background's
leaf patterns and outputs, the onnxruntime cross-check of the background)
is built once per (model, background) and kept in a small per-process LRU
(:data:`CACHED_TREES`), so a one-row request routes its row through every
split once and combines it with the precomputed patterns.

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
  the K margins, which reduces to shap's rescaling for one margin. Both maps
  are summed per leaf pattern (:meth:`InterventionalTrees.mapped`): no
  coalition is enumerated and no per-reference explanation is formed.

The model's outputs computed from the trees are checked against ``task.f``
(onnxruntime) on the rows explained (every request) and on at most
:data:`VERIFY_BACKGROUND_ROWS` background rows (once per model and background).

Parsed ensembles are kept in a per-process LRU keyed by the SHA-256 of the
ONNX bytes (:data:`CACHED_ENSEMBLES` entries, arrays made read-only).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.errors import ExplanationFailed, InvalidRequest
from engine.methods.base import Attributions, ExplainTask, library_failures, require_background
from engine.methods.trees.fast import InterventionalTrees
from engine.methods.trees.model import TreeEnsemble, not_applicable, transform
from engine.methods.trees.reader import read_ensemble

MAX_SOFTMAX_CLASSES = 12
_EPS32 = float(np.finfo(np.float32).eps)

CACHED_ENSEMBLES = 8
"""Parsed ensembles kept per process (least recently used dropped first)."""

VERIFY_BACKGROUND_ROWS = 32
"""Background rows (evenly spaced) checked against onnxruntime besides the explained rows."""

CACHED_TREES = 8
"""Precomputed (model, background) pairs kept per process."""

_cache: OrderedDict[str, TreeEnsemble] = OrderedDict()
_cache_lock = threading.Lock()
_trees: OrderedDict[tuple[str, str], _Prepared] = OrderedDict()
_last_bytes: list[tuple[bytes, str]] = []  # the latest graph bytes object and its hash: no rehash per request


def _model_key(onnx_bytes: bytes) -> str:
    """SHA-256 of the graph, remembered for the bytes object last seen (a warm worker passes the same one)."""
    with _cache_lock:
        for seen, key in _last_bytes:
            if seen is onnx_bytes:
                return key
    key = hashlib.sha256(onnx_bytes).hexdigest()
    with _cache_lock:
        _last_bytes[:] = [(onnx_bytes, key)]
    return key


def cached_ensemble(onnx_bytes: bytes) -> TreeEnsemble:
    """:func:`engine.methods.trees.reader.read_ensemble` through the per-process LRU keyed by the bytes' SHA-256.

    Raises:
        InvalidRequest: As ``read_ensemble`` (failures are not cached).
    """
    key = _model_key(onnx_bytes)
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


class _Prepared:
    """One ensemble against one background: the fast TreeSHAP tables and the background's margins."""

    def __init__(self, ensemble: TreeEnsemble, task: ExplainTask) -> None:
        B = ensemble.prepare(task.background)
        self.trees = InterventionalTrees(ensemble, B)
        self.size = _scale(ensemble)
        sample = np.unique(np.linspace(0, len(B) - 1, min(len(B), VERIFY_BACKGROUND_ROWS)).astype(np.intp))
        _verify(task, ensemble, self.trees.scores(B[sample]), task.background[sample], self.size)
        self.margins = self.trees.scores(B) @ ensemble.matrix.T + ensemble.offset


def _prepared(ensemble: TreeEnsemble, task: ExplainTask) -> _Prepared:
    """The tables of ``task``'s model and background, built (and the background cross-checked) on first use."""
    assert task.onnx_model is not None
    key = (_model_key(task.onnx_model), hashlib.sha256(np.ascontiguousarray(task.background).tobytes()).hexdigest())
    with _cache_lock:
        hit = _trees.get(key)
        if hit is not None:
            _trees.move_to_end(key)
            return hit
    prepared = _Prepared(ensemble, task)
    with _cache_lock:
        _trees[key] = prepared
        _trees.move_to_end(key)
        while len(_trees) > CACHED_TREES:
            _trees.popitem(last=False)
    return prepared


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
                output, or the attributions miss additivity.
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
            prepared = _prepared(ensemble, task)
            trees = prepared.trees
            Z = ensemble.prepare(task.X)
            ok = trees.routed(Z)
            scores = trees.scores(Z, ok)
            _verify(task, ensemble, scores, task.X, prepared.size)
            margins = scores @ ensemble.matrix.T + ensemble.offset
            if space == "margin" or ensemble.post_transform == "NONE":
                phi, expected = trees.margin(Z, ok)
                values = phi @ ensemble.matrix.T
                base = ensemble.matrix @ expected + ensemble.offset
                output = margins if space == "margin" else transform(margins, ensemble.post_transform)
            else:
                if ensemble.post_transform == "LOGISTIC":
                    maps = _logistic_maps(margins, prepared.margins)
                else:
                    if ensemble.n_outputs > MAX_SOFTMAX_CLASSES:
                        raise not_applicable(
                            f"output_space 'probability' handles at most {MAX_SOFTMAX_CLASSES} softmax classes"
                        )
                    maps = _softmax_maps(margins, prepared.margins)
                values = trees.mapped(Z, maps, ensemble.matrix, ok)
                base = transform(prepared.margins, ensemble.post_transform).mean(axis=0)
                output = transform(margins, ensemble.post_transform)
            _check_additivity(values, base, output, prepared.size)
        return Attributions(
            base_values=np.tile(base, (len(Z), 1)),
            values=values,
            output_values=output,
            quality=[{"converged": True} for _ in range(len(Z))],
            info={"output_space": space},
        )


def _logistic_maps(m_x: FloatArray, m_b: FloatArray) -> FloatArray:
    """``(n, m, K, K)`` diagonal maps ``(σ(m_x) − σ(m_r)) / (m_x − m_r)`` per output (σ' at the midpoint if equal)."""
    delta = m_x[:, None, :] - m_b[None, :, :]
    rise = transform(m_x, "LOGISTIC")[:, None, :] - transform(m_b, "LOGISTIC")[None, :, :]
    mid = transform(m_b[None, :, :] + delta / 2, "LOGISTIC")
    small = np.abs(delta) < 1e-6
    ratio = np.where(small, mid * (1 - mid), rise / np.where(small, 1.0, delta))
    K = m_x.shape[1]
    maps: FloatArray = ratio[..., :, None] * np.eye(K)
    return maps


def _softmax_maps(m_x: FloatArray, m_b: FloatArray) -> FloatArray:
    """``(n, m, K, K)``: :func:`_softmax_split` for every (row, background row) pair at once."""
    n, K = m_x.shape
    m = len(m_b)
    masks = ((np.arange(2**K)[:, None] >> np.arange(K)) & 1).astype(bool)
    split = _softmax_split(np.repeat(m_x, m, axis=0), np.tile(m_b, (n, 1)), masks)
    return split.reshape(n, m, K, K)


def _softmax_split(m_x: FloatArray, m_r: FloatArray, masks: Any) -> FloatArray:
    """``W`` with ``W · (m_x − m_r) = p(x) − p(r)``: the Shapley split over the margins, per unit margin.

    Where a margin barely moves (its Shapley share is ~0 but its feature
    attributions may still cancel out), the softmax Jacobian at the
    midpoint stands in; it agrees with the split to first order.
    """
    n, k = m_x.shape
    m_r = np.broadcast_to(m_r, m_x.shape)  # one reference for every row, or one per row
    delta = m_x - m_r
    points = m_r[:, None, :] + masks[None, :, :] * delta[:, None, :]
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
    if _widest_feature(ensemble) >= d:
        raise not_applicable(f"a split uses a feature beyond the card's {d}")
    if ensemble.n_outputs != len(task.output_names):
        raise not_applicable(f"the graph has {ensemble.n_outputs} outputs, the model card {len(task.output_names)}")


_widest: dict[int, tuple[TreeEnsemble, int]] = {}


def _widest_feature(ensemble: TreeEnsemble) -> int:
    """The highest feature index any split reads (remembered per cached ensemble: 200 trees cost ~3 ms)."""
    hit = _widest.get(id(ensemble))
    if hit is not None and hit[0] is ensemble:
        return hit[1]
    widest = max((int(t.feature.max()) for t in ensemble.trees), default=-1)
    with _cache_lock:
        if len(_widest) > 4 * CACHED_ENSEMBLES:
            _widest.clear()
        _widest[id(ensemble)] = (ensemble, widest)
    return widest


def _scale(ensemble: TreeEnsemble) -> float:
    """A bound on any score's magnitude, for float32 tolerances."""
    return float(np.abs(ensemble.base).max() + sum(np.abs(t.value).max() for t in ensemble.trees))


def _verify(task: ExplainTask, ensemble: TreeEnsemble, scores: FloatArray, raw: FloatArray, size: float) -> None:
    """Raise unless the trees' ``scores`` reproduce ``task.f`` (onnxruntime sums in float32, hence the tolerance)."""
    expected = transform(scores @ ensemble.matrix.T + ensemble.offset, ensemble.post_transform)
    actual = np.asarray(task.f(raw), dtype=np.float64).reshape(len(raw), -1)
    if actual.shape != expected.shape:
        raise not_applicable(f"the model returns {actual.shape[1]} outputs, the trees {expected.shape[1]}")
    scale = (1 + size) * float(np.abs(ensemble.matrix).sum(axis=1).max() + 1)
    tolerance = (1e-5 + 2 * len(ensemble.trees) * _EPS32) * scale
    worst = float(np.abs(expected - actual).max())
    if not worst <= tolerance:
        raise ExplanationFailed(
            f"tree_shap: the trees read from the graph differ from onnxruntime's output by {worst:.3g} "
            f"(tolerance {tolerance:.3g}); use exact, permutation or kernel_shap"
        )


def _check_additivity(values: FloatArray, base: FloatArray, output: FloatArray, size: float) -> None:
    gap = float(np.abs(base[None, :] + values.sum(axis=1) - output).max()) if len(output) else 0.0
    if not gap <= 1e-6 * (1 + size):
        raise ExplanationFailed(f"tree_shap: attributions miss additivity by {gap:.3g}")
