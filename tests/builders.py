"""Tiny real ONNX models built in the test session (skl2onnx, onnx.helper)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pandas as pd
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


@dataclass
class BuiltModel:
    """An ONNX model with its card, background and the rows it was trained on."""

    onnx_bytes: bytes
    card: dict[str, Any]
    X: np.ndarray
    y: np.ndarray
    sklearn: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def background_csv(self, rows: int = 50) -> bytes:
        names = [f["name"] if isinstance(f, dict) else f for f in self.card["features"]]
        return pd.DataFrame(self.X[:rows], columns=names).to_csv(index=False).encode()

    def card_json(self, **changes: Any) -> str:
        return json.dumps({**self.card, **changes})


def _convert(model: Any, X: np.ndarray, **options: Any) -> bytes:
    onx = to_onnx(model, X[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3}, **options)
    return onx.SerializeToString()


def binary_classifier(name: str = "credit") -> BuiltModel:
    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    onx = _convert(model, X, options={id(model): {"zipmap": False}})
    card = {
        "name": name,
        "task": "classification",
        "features": ["income", "age", "debt", "tenure"],
        "class_names": ["denied", "approved"],
    }
    return BuiltModel(onx, card, X, y, model)


def multiclass_classifier(name: str = "species") -> BuiltModel:
    X, y = make_classification(n_samples=300, n_features=5, n_informative=4, n_redundant=0, n_classes=3, random_state=1)
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=800, random_state=0).fit(X, y)
    onx = _convert(model, X)  # keeps skl2onnx's ZipMap output on purpose
    card = {
        "name": name,
        "task": "classification",
        "features": [f"f{i}" for i in range(5)],
        "class_names": ["setosa", "versicolor", "virginica"],
    }
    return BuiltModel(onx, card, X, y, model)


def regressor(name: str = "price") -> BuiltModel:
    X, y = make_regression(n_samples=200, n_features=3, noise=0.1, random_state=2)
    model = LinearRegression().fit(X, y)
    onx = _convert(model, X)
    card = {"name": name, "task": "regression", "features": ["rooms", "area", "distance"]}
    return BuiltModel(onx, card, X, y, model)


def forest_classifier(name: str = "forest") -> BuiltModel:
    X, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=3)
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X, y)
    onx = _convert(model, X, options={id(model): {"zipmap": False}})
    card = {"name": name, "task": "classification", "features": ["a", "b", "c", "d"], "class_names": ["no", "yes"]}
    return BuiltModel(onx, card, X, y, model)


def helper_model(
    nodes: list[onnx.NodeProto],
    *,
    inputs: list[onnx.ValueInfoProto] | None = None,
    outputs: list[onnx.ValueInfoProto] | None = None,
    initializers: list[onnx.TensorProto] | None = None,
    opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> onnx.ModelProto:
    """A graph made by hand: default input ``x`` [N, 2] float, output ``y`` [N, 1] float."""
    graph = helper.make_graph(
        nodes,
        "handmade",
        inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=initializers or [],
    )
    return helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)], ir_version=8)


def affine_regressor(weights: list[float], bias: float = 0.5) -> onnx.ModelProto:
    """y = x·w + b, built with onnx.helper."""
    d = len(weights)
    w = helper.make_tensor("w", TensorProto.FLOAT, [d, 1], weights)
    b = helper.make_tensor("b", TensorProto.FLOAT, [1], [bias])
    return helper_model(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, d])],
        initializers=[w, b],
    )


def external_tensor(name: str, dtype: int = TensorProto.FLOAT, dims: tuple[int, ...] = (1,)) -> onnx.TensorProto:
    """A tensor whose data is 'in another file' (a path out of the store): what screening must refuse."""
    tensor = helper.make_tensor(name, dtype, list(dims), [0] * max(1, dims[0] if dims else 1))
    tensor.data_location = TensorProto.EXTERNAL
    for data_field in ("float_data", "int64_data"):
        tensor.ClearField(data_field)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/shadow"
    return tensor


def to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def input_shaped_model(counts: dict[float, float] | None = None, *, scale: float | None = None) -> onnx.ModelProto:
    """y = x·0 + Σ ConstantOfShape([n]) where n comes from the input ``x`` [N, 1] (the issue's memory bomb).

    With ``scale``, n = max(x)·scale: any large input asks for memory. With ``counts``, n = Σ count·[max(x) == v]:
    only those exact values do, so the model passes an upload trial that never feeds them.
    """
    nodes = [helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0)]
    inits = []
    if scale is not None:
        inits.append(helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]))
        nodes.append(helper.make_node("Mul", ["m", "scale"], ["nf"]))
    else:
        terms = []
        for i, (value, count) in enumerate((counts or {}).items()):
            inits += [
                helper.make_tensor(f"v{i}", TensorProto.FLOAT, [], [value]),
                helper.make_tensor(f"c{i}", TensorProto.FLOAT, [], [count]),
            ]
            nodes += [
                helper.make_node("Equal", ["m", f"v{i}"], [f"eq{i}"]),
                helper.make_node("Cast", [f"eq{i}"], [f"eqf{i}"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"eqf{i}", f"c{i}"], [f"t{i}"]),
            ]
            terms.append(f"t{i}")
        nodes.append(helper.make_node("Sum", terms, ["nf"]))
    inits += [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    nodes += [
        helper.make_node("Cast", ["nf"], ["n"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["n", "one"], ["shape"]),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
        helper.make_node("ReduceSum", ["ones"], ["total"], keepdims=1),
        helper.make_node("Mul", ["x", "zero"], ["x0"]),
        helper.make_node("Add", ["x0", "total"], ["y"]),
    ]
    return helper_model(
        nodes, inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])], initializers=inits
    )


def spin_model(trigger: float = 9.0, trips: int = 10**12) -> onnx.ModelProto:
    """y = x, after a Loop of ``trips`` iterations when max(x) == ``trigger`` (else none): a time bomb."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor("step", TensorProto.FLOAT, [], [1.0])],
    )
    inits = [
        helper.make_tensor("trigger", TensorProto.FLOAT, [], [trigger]),
        helper.make_tensor("trips", TensorProto.INT64, [], [trips]),
        helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        helper.make_tensor("acc0", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
    ]
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
        helper.make_node("Equal", ["m", "trigger"], ["hit"]),
        helper.make_node("Cast", ["hit"], ["hit64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["hit64", "trips"], ["n"]),
        helper.make_node("Loop", ["n", "true", "acc0"], ["acc"], body=body),
        helper.make_node("Mul", ["acc", "zero"], ["acc0x"]),
        helper.make_node("Add", ["x", "acc0x"], ["y"]),
    ]
    return helper_model(
        nodes, inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])], initializers=inits
    )


class TableModel(BuiltModel):
    """A built model whose categorical features are ordinal codes in ``X``, written as names in its background."""

    def background_csv(self, rows: int = 50) -> bytes:
        return self.frame(self.X[:rows]).to_csv(index=False).encode()

    def frame(self, X: np.ndarray) -> pd.DataFrame:
        data: dict[str, Any] = {}
        for j, feature in enumerate(self.card["features"]):
            if isinstance(feature, dict) and feature.get("type") == "categorical":
                data[feature["name"]] = np.asarray(feature["categories"], dtype=object)[X[:, j].astype(int)]
            else:
                data[feature["name"] if isinstance(feature, dict) else feature] = X[:, j]
        return pd.DataFrame(data)


def credit_rows(n: int, rng: np.random.Generator) -> np.ndarray:
    """Independent credit features: income, debt, age, sex (0/1), housing (code of rent, own, mortgage)."""
    income = np.round(rng.normal(50_000, 15_000, n), 0)
    debt = np.round(np.abs(rng.normal(20_000, 8_000, n)), 0)
    age = rng.integers(20, 70, n).astype(float)
    sex = rng.integers(0, 2, n).astype(float)
    housing = rng.integers(0, 3, n).astype(float)
    return np.column_stack([income, debt, age, sex, housing])


def credit_logistic(name: str = "credit-lr", sex_bias: float = 0.0, rows: int = 400) -> TableModel:
    """A logistic-regression credit model with a planted dependence on income (up) and debt (down).

    Features: income, debt, age, sex (0/1; ``sex_bias`` lowers the approval logit of sex=1) and housing
    (categorical: rent, own, mortgage). ``extra["logit"]`` gives the fitted model's logit in raw feature space
    as ``(weights, bias)``, for analytic minimum moves.
    """
    rng = np.random.default_rng(11)
    X = credit_rows(rows, rng)
    income, debt, age, sex, housing = X.T
    z = 2 * (income - 50_000) / 15_000 - 1.5 * (debt - 20_000) / 8_000 + 0.2 * (age - 45) / 15 - sex_bias * sex
    z = z + 0.3 * (housing == 1) + rng.normal(0, 0.3, rows)
    y = (z > 0).astype(int)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=100.0, max_iter=2000)).fit(X, y)
    onx = _convert(model, X, options={id(model): {"zipmap": False}})
    scaler, lr = model[0], model[1]
    weights = lr.coef_[0] / scaler.scale_
    bias = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
    card = {
        "name": name,
        "task": "classification",
        "features": [
            "income",
            "debt",
            "age",
            "sex",
            {"name": "housing", "type": "categorical", "categories": ["rent", "own", "mortgage"]},
        ],
        "class_names": ["denied", "approved"],
    }
    return TableModel(onx, card, X, y, model, extra={"logit": (weights, bias)})


def study_mlp() -> BuiltModel:
    """A scaler + MLP classifier on 5 features (exact Shapley values enumerate 32 coalitions) whose int8_static
    and prune_structured (0.25) variants pass the gate: the compression study's model."""
    X, y = make_classification(n_samples=2400, n_features=5, n_informative=4, n_redundant=0, random_state=7)
    model = make_pipeline(StandardScaler(), MLPClassifier((32,), max_iter=800, random_state=0)).fit(X, y)
    onx = _convert(model, X, options={id(model): {"zipmap": False}})
    features = [f"x{i}" for i in range(5)]
    card = {"name": "mlp", "task": "classification", "features": features, "class_names": ["denied", "approved"]}
    return BuiltModel(onx, card, X, y, model)


def small_mlp(name: str = "mlp") -> BuiltModel:
    """A 4-feature MLP classifier: it has MatMul weights, so variants build (quickly)."""
    X, y = make_classification(n_samples=200, n_features=4, n_informative=3, n_redundant=0, random_state=1)
    model = MLPClassifier((8,), max_iter=300, random_state=0).fit(X, y)
    onx = _convert(model, X, options={id(model): {"zipmap": False}})
    card = {"name": name, "task": "classification", "features": ["a", "b", "c", "d"], "class_names": ["no", "yes"]}
    return BuiltModel(onx, card, X, y, model)
