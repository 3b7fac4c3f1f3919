"""Small real models shared by the quantization and fidelity tests, built on demand.

skl2onnx MLPs (one behind a StandardScaler, so the graph starts with an
``ai.onnx.ml`` Scaler), a torch CNN exported with the TorchScript exporter,
and a hand-made graph whose weights no per-tensor int8 scale can represent.
Each test module wraps the builders it needs in module-scoped fixtures.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Model = tuple[bytes, np.ndarray]
FEATURES = 10


def tabular(n: int = 1500, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose target depends on every feature, with distinct strengths.

    Every feature matters, so attribution rankings are meaningful end to end
    (irrelevant features would rank by noise and blur the Spearman check).
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, FEATURES)).astype(np.float32)
    weights = np.linspace(0.3, 3.0, FEATURES) * np.where(np.arange(FEATURES) % 2, 1.0, -1.0)
    return X, X @ weights + 0.5 * X[:, 0] * X[:, 1]


def sklearn_onnx(estimator: Any, X: np.ndarray, y: np.ndarray) -> bytes:
    """Fit a scikit-learn estimator and convert it with skl2onnx (plain probability matrix)."""
    from skl2onnx import to_onnx

    options = {"zipmap": False} if hasattr(estimator, "predict_proba") else None
    return bytes(to_onnx(estimator.fit(X, y), X[:1], options=options).SerializeToString())


def float_graph(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], input_shape: list[int | None]) -> bytes:
    """A hand-made float graph from ``X`` to ``y``."""
    graph = helper.make_graph(
        nodes,
        "handmade",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(value.astype(np.float32), name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def mlp() -> Model:
    """An MLPClassifier on 10 features (no ai.onnx.ml preprocessing)."""
    from sklearn.neural_network import MLPClassifier

    X, y = tabular()
    return sklearn_onnx(MLPClassifier(hidden_layer_sizes=(32, 16), max_iter=400, random_state=0), X, y > 0), X


def pipeline() -> Model:
    """StandardScaler + MLPClassifier on unscaled features: the graph starts with a Scaler."""
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = tabular(seed=1)
    X = (X * 20 + 50).astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0)
    return sklearn_onnx(make_pipeline(StandardScaler(), mlp), X, y > 0), X


def export_cnn(dynamic_batch: bool) -> bytes:
    """A tiny torch CNN on 3x16x16 images, exported by the TorchScript exporter."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 4),
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (torch.randn(1, 3, 16, 16),),
        buffer,  # type: ignore[arg-type]  # file objects work; the stub says paths
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}} if dynamic_batch else None,
    )
    return buffer.getvalue()


def wide_range() -> Model:
    """A regressor int8 cannot represent: one huge weight beside ordinary ones.

    ``y = (X @ W1) @ W2`` where column 1 of ``W1`` holds a weight of 1e4 that
    ``W2`` then zeroes. A per-tensor int8 scale for ``W1`` (and for its
    output) is ~1e4 / 127, so the ordinary weights that make the prediction
    all round to zero.
    """
    rng = np.random.default_rng(4)
    w1 = np.zeros((FEATURES, 2))
    w1[:, 0] = rng.uniform(0.5, 1.5, FEATURES) * rng.choice([-1, 1], FEATURES)
    w1[0, 1] = 1e4
    nodes = [helper.make_node("MatMul", ["X", "W1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["y"])]
    model = float_graph(nodes, {"W1": w1, "W2": np.array([[1.0], [0.0]])}, [None, FEATURES])
    return model, rng.normal(size=(400, FEATURES)).astype(np.float32)
