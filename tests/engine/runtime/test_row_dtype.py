"""Narrow coalition rows: float32 rows reach a float32 model as they are, and give the float64 path's answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import make_classification
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from engine.methods import get_explainer, validate_params
from engine.methods.base import ExplainTask
from engine.models.card import ModelCard
from engine.models.rows import encode_feeds
from engine.models.screening import screen_model
from engine.runtime.sessions import ModelSession, SessionCache
from tests import builders


def _session(data: bytes, card: ModelCard, tmp_path: Path) -> ModelSession:
    _, signature = screen_model(data, card)
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    return SessionCache(1, 1, ["CPUExecutionProvider"]).get(path, "k", card, signature)


def _double_affine() -> onnx.ModelProto:
    """``y = float(x · w)`` on a float64 input."""
    weights = helper.make_tensor("w", TensorProto.DOUBLE, [2, 1], [0.5, -2.0])
    return builders.helper_model(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Cast", ["z"], ["y"], to=TensorProto.FLOAT)],
        inputs=[helper.make_tensor_value_info("x", TensorProto.DOUBLE, [None, 2])],
        initializers=[weights],
    )


def _wide_classifier() -> builders.BuiltModel:
    """A scaler + MLP on 12 features: Kernel SHAP samples its coalitions."""
    X, y = make_classification(n_samples=600, n_features=12, n_informative=8, random_state=3)
    model = make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=400, random_state=0)).fit(X, y)
    onx = to_onnx(model, X[:1].astype(np.float32), options={id(model): {"zipmap": False}}, target_opset=17)
    card = {
        "name": "wide",
        "task": "classification",
        "features": [f"x{i}" for i in range(12)],
        "class_names": ["a", "b"],
    }
    return builders.BuiltModel(onx.SerializeToString(), card, X, y, model)


def test_a_float32_single_tensor_model_takes_float32_rows_without_a_copy(tmp_path: Path) -> None:
    built = builders.binary_classifier()
    card = ModelCard.from_dict(built.card)
    session = _session(built.onnx_bytes, card, tmp_path)
    assert session.row_dtype is np.float32
    rows = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    (fed,) = encode_feeds(rows, card, session.signature).values()
    assert fed.dtype == np.float32 and np.shares_memory(fed, rows)
    # The same scores as float64 rows that the feed casts to float32 itself.
    np.testing.assert_array_equal(session.scores(rows), session.scores(rows.astype(np.float64)))


def test_double_inputs_and_one_hot_columns_keep_float64_rows(tmp_path: Path) -> None:
    double = ModelCard.from_dict({"name": "double", "task": "regression", "features": ["a", "b"]})
    assert _session(_double_affine().SerializeToString(), double, tmp_path).row_dtype is np.float64
    one_hot = ModelCard.from_dict(
        {
            "name": "onehot",
            "task": "regression",
            "features": [
                {"name": "colour", "type": "categorical", "categories": ["red", "blue"], "encoding": "one_hot"}
            ],
        }
    )
    model = builders.affine_regressor([1.0, 2.0]).SerializeToString()
    assert _session(model, one_hot, tmp_path).row_dtype is np.float64


@pytest.mark.parametrize("background_rows", [100, 10])  # the whole background, and part of it
def test_kernel_shap_on_float32_rows_gives_the_float64_answer(tmp_path: Path, background_rows: int) -> None:
    built = _wide_classifier()
    card = ModelCard.from_dict(built.card)
    session = _session(built.onnx_bytes, card, tmp_path)
    dtypes: list[np.dtype] = []

    def f(rows: np.ndarray) -> np.ndarray:
        dtypes.append(np.asarray(rows).dtype)
        return session.scores(rows)

    X, background = built.X[:3], built.X[100:200]
    params = validate_params("kernel_shap", {"nsamples": 200, "background_rows": background_rows, "seed": 3})
    answers = []
    for narrow in (np.float64, np.float32):
        task = ExplainTask(
            f=f,
            X=X,
            background=background,
            feature_names=card.feature_names,
            output_names=card.output_names,
            targets=[[1]] * len(X),
            params=params,
            seed=3,
            row_dtype=narrow,
        )
        answers.append(get_explainer("kernel_shap").explain(task))
    assert np.dtype(np.float32) in dtypes
    wide, narrow_answer = answers
    np.testing.assert_allclose(narrow_answer.values, wide.values, rtol=0, atol=1e-6)
    np.testing.assert_allclose(narrow_answer.std_errors, wide.std_errors, rtol=1e-3, atol=1e-9)
    # Additivity holds exactly on either path.
    np.testing.assert_allclose(
        narrow_answer.values.sum(axis=1), narrow_answer.output_values - narrow_answer.base_values, atol=1e-9
    )


def test_an_explanation_of_a_float32_model_hands_the_session_float32_coalitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_explanation tells the method the session's row type: the sampled coalitions reach it as float32."""
    from engine.explain.plan import build_request
    from engine.explain.result import Explanation
    from engine.explain.run import run_explanation
    from engine.models.store import ModelRegistry
    from engine.serving import Predictor
    from engine.settings import Settings

    built = _wide_classifier()
    settings = Settings(model_dir=tmp_path / "models")
    registry = ModelRegistry(settings)
    model = registry.register(built.onnx_bytes, ModelCard.from_dict(built.card), built.background_csv(100), "csv")
    seen: list[np.dtype] = []
    scores = ModelSession.scores

    def watched(self: ModelSession, rows: np.ndarray) -> np.ndarray:
        seen.append(np.asarray(rows).dtype)
        return scores(self, rows)  # the real session's scores

    monkeypatch.setattr(ModelSession, "scores", watched)
    body = {"instances": built.X[:2].tolist(), "method": "kernel_shap", "parameters": {"nsamples": 300}}
    answer = run_explanation(build_request(body, model, settings, "fp32"), registry, Predictor(settings, registry))
    assert isinstance(answer, Explanation) and answer.attributions.values.shape[:2] == (2, 12)
    assert np.dtype(np.float32) in seen[1:]  # after f(X): the coalitions
