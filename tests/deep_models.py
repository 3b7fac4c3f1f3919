"""Deep models trained in the test session: a CNN on the bundled digits, an MLP, a TF-IDF text classifier.

Each builder is cached, so every test module shares one trained model per
session; training is kept to seconds (one torch thread, a few epochs).
"""

from __future__ import annotations

import functools
import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.datasets import load_digits

from engine.models.image import ImageSpec

DIGITS_SPEC = ImageSpec(height=8, width=8, channels="L", layout="NCHW", scale="unit", resize=True)
POSITIVE = ("excellent", "wonderful", "delightful")
NEGATIVE = ("terrible", "awful", "dreadful")
NEUTRAL = (
    "the service was here today and the food arrived at our table after we ordered from the menu "
    "with friends on a monday evening in town near station"
).split()


def session(onnx_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])


@dataclass
class ImageModel:
    onnx_bytes: bytes
    spec: ImageSpec
    images: np.ndarray  # unit images (n, 8, 8, 1)
    labels: np.ndarray
    net: Any = None

    def f(self) -> Callable[[np.ndarray], np.ndarray]:
        sess = session(self.onnx_bytes)

        def score(images: np.ndarray) -> np.ndarray:
            (out,) = sess.run(None, {"image": self.spec.to_model(images)})
            return np.asarray(out, dtype=np.float64)

        return score

    def reference(self) -> Callable[[np.ndarray], np.ndarray]:
        sess = session(self.onnx_bytes)
        return lambda x: np.asarray(sess.run(None, {"image": x})[0], dtype=np.float64)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.images / 16.0)[..., None], data.target


def _cnn() -> Any:
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
        torch.nn.Softmax(dim=1),
    )


def export(net: Any, example: Any, input_name: str = "image") -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        example,
        buffer,
        dynamo=False,
        input_names=[input_name],
        output_names=["probabilities"],
        dynamic_axes={input_name: {0: "n"}, "probabilities": {0: "n"}},
        opset_version=17,
    )
    return buffer.getvalue()


@functools.cache
def digits_cnn() -> ImageModel:
    """A small CNN trained for a few seconds on sklearn's 8×8 digits (about 98 % train accuracy)."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    images, labels = _digits()
    net = _cnn()
    x = torch.tensor(DIGITS_SPEC.to_model(images))
    y = torch.tensor(labels)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(6):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 128):
            batch = order[start : start + 128]
            optimizer.zero_grad()
            loss = torch.nn.functional.nll_loss(torch.log(net(x[batch]) + 1e-9), y[batch])
            loss.backward()
            optimizer.step()
    net.eval()
    return ImageModel(export(net, x[:1]), DIGITS_SPEC, images, labels, net)


@functools.cache
def randomised_cnn() -> ImageModel:
    """The trained CNN with its last layers (second convolution and the classifier) re-initialised."""
    import copy

    import torch

    trained = digits_cnn()
    net = copy.deepcopy(trained.net)
    torch.manual_seed(1)
    net[2].reset_parameters()
    net[6].reset_parameters()
    example = torch.tensor(DIGITS_SPEC.to_model(trained.images[:1]))
    return ImageModel(export(net, example), DIGITS_SPEC, trained.images, trained.labels, net)


@functools.cache
def rgb_cnn(side: int = 224) -> bytes:
    """An untrained (seeded) RGB CNN on ``side``×``side`` NCHW images, two classes: for payload round trips."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 5, stride=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
        torch.nn.Softmax(dim=1),
    )
    return export(net.eval(), torch.zeros(1, 3, side, side))


def tabular_mlp(features: int = 4) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A torch MLP on a synthetic ``features``-feature problem, exported to ONNX: (onnx, X, y)."""
    import torch
    from sklearn.datasets import make_classification

    torch.set_num_threads(1)
    torch.manual_seed(0)
    X, y = make_classification(n_samples=300, n_features=features, n_informative=3, n_redundant=0, random_state=0)
    net = torch.nn.Sequential(
        torch.nn.Linear(features, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2), torch.nn.Softmax(dim=1)
    )
    xt, yt = torch.tensor(X, dtype=torch.float32), torch.tensor(y)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(torch.log(net(xt) + 1e-9), yt).backward()
        optimizer.step()
    return export(net.eval(), xt[:1], "x"), X, y


def sentences(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Generated sentences: neutral filler with one planted positive or negative word (label 1 / 0)."""
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        filler = rng.sample(NEUTRAL, 8)
        label = i % 2
        word = rng.choice(POSITIVE if label else NEGATIVE)
        filler.insert(rng.randrange(len(filler) + 1), word)
        texts.append(" ".join(filler))
        labels.append(label)
    return texts, np.asarray(labels)


@dataclass
class TextModel:
    onnx_bytes: bytes
    texts: list[str]
    labels: np.ndarray

    def f(self) -> Callable[[Sequence[str]], np.ndarray]:
        sess = session(self.onnx_bytes)
        name = sess.get_inputs()[0].name

        def score(texts: Sequence[str]) -> np.ndarray:
            feed = np.asarray(list(texts), dtype=object).reshape(-1, 1)
            (out,) = sess.run(["probabilities"], {name: feed})
            return np.asarray(out, dtype=np.float64)

        return score


@functools.cache
def tfidf_classifier() -> TextModel:
    """TF-IDF + logistic regression on the generated sentences, exported with skl2onnx (string input)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts, labels = sentences(400)
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0)).fit(texts, labels)
    onx = to_onnx(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}, id(pipeline.steps[0][1]): {"locale": "C"}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return TextModel(onx.SerializeToString(), texts, labels)


def onnx_model(onnx_bytes: bytes) -> onnx.ModelProto:
    return onnx.load_from_string(onnx_bytes)


@dataclass
class TokenModel:
    onnx_bytes: bytes
    tokenizer_path: Any
    texts: list[str]

    def encoder(self) -> Any:
        from engine.models.text import TokenIds

        return TokenIds(self.tokenizer_path, max_length=16)

    def f(self) -> Callable[[Sequence[str]], np.ndarray]:
        sess = session(self.onnx_bytes)
        encoder = self.encoder()

        def score(texts: Sequence[str]) -> np.ndarray:
            ids, _ = encoder.encode(list(texts))
            return np.asarray(sess.run(None, {"input_ids": ids})[0], dtype=np.float64)

        return score


@functools.cache
def token_classifier(directory: Any) -> TokenModel:
    """A mean-of-embeddings classifier over token ids, with a WordLevel ``tokenizer.json`` trained offline."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    texts, labels = sentences(400, seed=2)
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    path = directory / "tokenizer.json"
    tokenizer.save(str(path))

    class MeanEmbedding(torch.nn.Module):
        def __init__(self, vocabulary: int) -> None:
            super().__init__()
            self.embedding = torch.nn.Embedding(vocabulary, 8, padding_idx=0)
            self.classifier = torch.nn.Linear(8, 2)

        def forward(self, ids: Any) -> Any:
            mask = (ids != 0).float().unsqueeze(-1)
            mean = (self.embedding(ids) * mask).sum(1) / (mask.sum(1) + 1e-6)
            return torch.softmax(self.classifier(mean), dim=1)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = MeanEmbedding(tokenizer.get_vocab_size())
    model = TokenModel(b"", path, texts)
    ids = torch.tensor(model.encoder().encode(texts)[0])
    y = torch.tensor(labels)
    optimizer = torch.optim.Adam(net.parameters(), 5e-2)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(torch.log(net(ids) + 1e-9), y).backward()
        optimizer.step()
    model.onnx_bytes = export(net.eval(), ids[:1], "input_ids")
    return model
