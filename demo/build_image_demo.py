"""Build the demo image model: a small CNN on scikit-learn's bundled 8×8 digits.

Run from the repository root with the ``gradients`` extra installed (torch):
``.venv/bin/python demo/build_image_demo.py``. It trains for a few seconds on
CPU and writes beside this file:

* ``digits.onnx`` — the CNN (input ``image`` ``[N, 1, 8, 8]`` in [0, 1],
  output ``probabilities`` ``[N, 10]``), exported with torch's TorchScript exporter;
* ``digits_card.json`` — its card (input kind ``image``);
* ``digits_background.csv`` — 100 training images, one per row, 64 pixel
  columns ``p0 … p63`` (row-major, unit scale);
* ``digit.png`` and ``digits_example.json`` — a held-out digit as a PNG and as
  the body of an explain request (base64 PNG).

Nothing is downloaded: the digits ship with scikit-learn.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.datasets import load_digits

HERE = Path(__file__).resolve().parent
HOLD_OUT = 1500


def train(images: np.ndarray, labels: np.ndarray) -> torch.nn.Module:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(256, 10),
        torch.nn.Softmax(dim=1),
    )
    x, y = torch.tensor(images, dtype=torch.float32), torch.tensor(labels)
    optimizer = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(10):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 128):
            batch = order[start : start + 128]
            optimizer.zero_grad()
            torch.nn.functional.nll_loss(torch.log(net(x[batch]) + 1e-9), y[batch]).backward()
            optimizer.step()
    return net.eval()


def main() -> None:
    digits = load_digits()
    images = (digits.images / 16.0)[:, None].astype(np.float32)  # N, 1, 8, 8 in [0, 1]
    labels = digits.target
    net = train(images[:HOLD_OUT], labels[:HOLD_OUT])
    with torch.no_grad():
        held_out = net(torch.tensor(images[HOLD_OUT:])).argmax(1).numpy()
    print(f"held-out accuracy: {(held_out == labels[HOLD_OUT:]).mean():.3f}")
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        torch.tensor(images[:1]),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}},
        opset_version=17,
    )
    (HERE / "digits.onnx").write_bytes(buffer.getvalue())
    card = {
        "name": "digits",
        "task": "classification",
        "input_kind": "image",
        "image": {"layout": "NCHW", "height": 8, "width": 8, "channels": "L", "scale": "unit", "resize": True},
        "class_names": [str(d) for d in range(10)],
        "output": "probabilities",
        "description": "A small CNN on scikit-learn's 8×8 digits (demo).",
    }
    (HERE / "digits_card.json").write_text(json.dumps(card, indent=2) + "\n")
    flat = images[:100].reshape(100, 64)
    pd.DataFrame(flat, columns=[f"p{i}" for i in range(64)]).round(4).to_csv(
        HERE / "digits_background.csv", index=False
    )
    example = images[HOLD_OUT + 3, 0]
    png = io.BytesIO()
    Image.fromarray(np.rint(example * 255).astype(np.uint8), mode="L").save(png, format="PNG")
    (HERE / "digit.png").write_bytes(png.getvalue())
    body = {
        "instances": [base64.b64encode(png.getvalue()).decode("ascii")],
        "method": "occlusion",
        "parameters": {"patch": 2, "stride": 1},
        "wait": 30,
    }
    (HERE / "digits_example.json").write_text(json.dumps(body) + "\n")
    print(f"example digit: {labels[HOLD_OUT + 3]}")


if __name__ == "__main__":
    main()
