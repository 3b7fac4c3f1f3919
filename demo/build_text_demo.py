"""Build the demo text model: a support-ticket router (TF-IDF + logistic regression, skl2onnx).

Run from the repository root: ``.venv/bin/python demo/build_text_demo.py``.
Tickets are generated from templates with words that mark their queue
(billing, technical, account), so the explanations have a known answer. It
writes beside this file:

* ``tickets.onnx`` — the pipeline (input ``text`` ``[N, 1]`` string, output
  ``probabilities`` ``[N, 3]``);
* ``tickets_card.json`` — its card (input kind ``text``);
* ``tickets_example.json`` — the body of an explain request.

``locale`` is set to ``C`` on the exported ``StringNormalizer``: skl2onnx
defaults to ``en_US.UTF-8``, which onnxruntime refuses to load on systems
without that locale installed (most containers).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

HERE = Path(__file__).resolve().parent
QUEUES = {
    "billing": ["invoice", "refund", "charged", "payment", "receipt", "subscription"],
    "technical": ["crash", "error", "bug", "freezes", "install", "slow"],
    "account": ["password", "login", "username", "locked", "email", "profile"],
}
FILLER = (
    "hello team i have a problem with my order since yesterday and would like some help please "
    "thanks in advance it happened again this morning on the app"
).split()


def tickets(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    names = list(QUEUES)
    for i in range(n):
        label = i % len(names)
        words = rng.sample(FILLER, 9)
        for word in rng.sample(QUEUES[names[label]], 2):
            words.insert(rng.randrange(len(words) + 1), word)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def main() -> None:
    texts, labels = tickets(900)
    pipeline = make_pipeline(TfidfVectorizer(), LogisticRegression(C=10.0, max_iter=1000)).fit(texts, labels)
    held_texts, held_labels = tickets(300, seed=1)
    print(f"held-out accuracy: {np.mean(pipeline.predict(held_texts) == np.asarray(held_labels)):.3f}")
    onx = to_onnx(
        pipeline,
        initial_types=[("text", StringTensorType([None, 1]))],
        options={id(pipeline.steps[-1][1]): {"zipmap": False}, id(pipeline.steps[0][1]): {"locale": "C"}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    (HERE / "tickets.onnx").write_bytes(onx.SerializeToString())
    card = {
        "name": "tickets",
        "task": "classification",
        "input_kind": "text",
        "text": {"max_chars": 2000, "max_words": 200},
        "class_names": list(QUEUES),
        "output": "probabilities",
        "description": "Routes a support ticket to a queue: TF-IDF + logistic regression (demo).",
    }
    (HERE / "tickets_card.json").write_text(json.dumps(card, indent=2) + "\n")
    body = {
        "instances": ["Hello, I was charged twice this month and the invoice shows the wrong amount."],
        "method": "occlusion",
        "wait": 30,
    }
    (HERE / "tickets_example.json").write_text(json.dumps(body) + "\n")


if __name__ == "__main__":
    main()
