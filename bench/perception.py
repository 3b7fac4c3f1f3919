"""Image benchmark: the small CNN's explainers per image, against raw shap and lime and bare onnxruntime.

Run from the repository root (about a minute on 2 cores; ``--quick``: a few seconds)::

    .venv/bin/python bench/perception.py [--quick] [--device cpu|cuda]

The model is built in the run: the small CNN of ``bench/variants.py`` (two 3×3 convolutions of 16 and 32
channels on 3×32×32 images, global average pooling, a linear head, softmax over 10 classes; torch export,
``dynamo=False``, seeded initial weights, no training: the cost of an evaluation is what is measured). Each image
(uniform noise, seeded) is explained for its predicted class.

* **onnxplain**: the engine's image methods as the worker calls them (``partition_image``, ``occlude_image``,
  ``lime_image`` on unit images ``(H, W, C)``) over one onnxruntime session (1 intra-op thread, no spinning).
* **raw**: ``shap.PartitionExplainer`` with ``shap.maskers.Image`` on the same black mask and ``max_evals``, and
  ``lime_image.LimeImageExplainer`` with the same SLIC segmentation, number of samples and hiding colour.
* **ort**: the batch sizes each method sent to the model, replayed as bare ``session.run`` calls on float32
  input prepared in advance (the limit).

Partition SHAP's Owen values have no cheap exact reference on 3,072 inputs; its error column is the largest
difference from raw shap's map on the same image (the engine runs shap's explainer, so it should be ~0). LIME's
column is ``—`` (a surrogate's weights, not Shapley values).
"""

from __future__ import annotations

import io
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from datetime import date
from importlib.metadata import version
from typing import Any

import benchlib
import numpy as np
import onnxruntime as ort

FloatArray = np.ndarray
SIZE, CLASSES = 32, 10


def build_cnn() -> bytes:
    """The small CNN as ONNX bytes (input ``image``: ``(n, 3, 32, 32)``, output ``probabilities``)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, CLASSES),
        torch.nn.Softmax(dim=1),
    ).eval()
    buffer = io.BytesIO()
    warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, as bench/variants.py uses
    torch.onnx.export(
        net,
        torch.zeros(1, 3, SIZE, SIZE),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=["probabilities"],
        dynamic_axes={"image": {0: "n"}, "probabilities": {0: "n"}},
        opset_version=17,
    )
    return buffer.getvalue()


class Model:
    """Unit images ``(n, H, W, C)`` → class probabilities, through one session; records its batch sizes."""

    def __init__(self, onnx: bytes) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(onnx, options, providers=benchlib.providers())
        self.batches: list[int] = []

    def __call__(self, images: FloatArray) -> FloatArray:
        batch = np.ascontiguousarray(np.moveaxis(np.asarray(images, dtype=np.float32), -1, 1))
        self.batches.append(len(batch))
        (y,) = self.session.run(["probabilities"], {"image": batch})
        return np.asarray(y, dtype=np.float64)

    def replay(self, batches: list[int]) -> float:
        """Seconds for bare ``session.run`` calls of the recorded batch sizes (float32 input ready)."""
        pool = np.random.default_rng(1).random((max(batches), 3, SIZE, SIZE), dtype=np.float32)
        start = time.perf_counter()
        for size in batches:
            self.session.run(["probabilities"], {"image": pool[:size]})
        return time.perf_counter() - start


Run = Callable[[FloatArray, int], FloatArray | None]  # (image, target) -> (H, W) map, or None (no comparable map)


def methods(model: Model) -> list[tuple[str, Run, Run | None, str]]:
    """(label, onnxplain run, raw library run, raw label) per method."""
    import shap
    from lime import lime_image as raw_lime
    from skimage.segmentation import slic

    from engine.methods.lime_image import lime_image
    from engine.methods.occlusion import occlude_image
    from engine.methods.partition import partition_image

    def ours_partition(image: FloatArray, target: int) -> FloatArray:
        return np.asarray(partition_image(model, image, [target], max_evals=1000).maps[0])

    def raw_partition(image: FloatArray, target: int) -> FloatArray:
        masker = shap.maskers.Image(np.zeros_like(image), image.shape)
        explainer = shap.PartitionExplainer(lambda b: model(b)[:, [target]], masker)
        values = explainer(image[None], max_evals=1000, batch_size=256, silent=True).values
        return np.asarray(values, dtype=np.float64)[0].sum(axis=2)[..., 0]

    def ours_occlusion(image: FloatArray, target: int) -> FloatArray:
        return np.asarray(occlude_image(model, image, [target]).maps[0])

    def ours_lime(image: FloatArray, target: int) -> None:
        lime_image(model, image, [target], num_samples=1000, segments=16)

    def raw_lime_run(image: FloatArray, target: int) -> None:
        explainer = raw_lime.LimeImageExplainer(random_state=0)
        explainer.explain_instance(
            image,
            model,
            labels=(target,),
            top_labels=None,
            hide_color=0,
            num_samples=1000,
            batch_size=256,
            segmentation_fn=lambda x: slic(x, n_segments=16, start_label=0),
        )

    return [
        ("partition 1000", ours_partition, raw_partition, "shap.Partition 1000"),
        ("occlusion", ours_occlusion, None, ""),
        ("lime 1000", ours_lime, raw_lime_run, "lime_image raw 1000"),
    ]


def timed(model: Model, run: Run, images: FloatArray, targets: list[int]) -> dict[str, Any]:
    """Median seconds per image, model rows per image, the maps, and the bare onnxruntime time per image."""
    times, maps, batches = [], [], []
    for image, target in zip(images, targets, strict=True):
        model.batches.clear()
        start = time.perf_counter()
        maps.append(run(image, target))
        times.append(time.perf_counter() - start)
        batches += model.batches
    return {
        "s": statistics.median(times),
        "evals": sum(batches) / len(images),
        "ort": model.replay(batches) / len(images),
        "maps": maps,
    }


def main() -> None:
    """Build the CNN, time every method and its raw library interleaved, print the table."""
    args = benchlib.arguments(__doc__)
    count = 1 if args.quick else 5
    started = time.perf_counter()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    libs = ("numpy", "onnxruntime", "shap", "lime", "scikit-image", "torch")
    print("versions: " + ", ".join(f"{p} {version(p)}" for p in libs))
    print("load average at start: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    model = Model(build_cnn())
    images = np.random.default_rng(0).random((count + 1, SIZE, SIZE, 3))
    targets = [int(t) for t in model(images).argmax(axis=1)]
    table = []
    for label, ours, raw, raw_label in methods(model):
        ours(images[-1], targets[-1])  # warm-up (imports, first-call allocations) on an image not timed
        mine = timed(model, ours, images[:count], targets[:count])
        row = [label, f"{mine['evals']:,.0f}", f"{mine['s'] * 1e3:.1f}", f"{mine['ort'] * 1e3:.2f}"]
        row.append(f"{mine['s'] / mine['ort']:.1f}")
        if raw is None:
            table.append([*row, "—", "—"])
            continue
        raw(images[-1], targets[-1])
        theirs = timed(model, raw, images[:count], targets[:count])
        gap = "—"
        if mine["maps"][0] is not None and theirs["maps"][0] is not None:
            gap = f"{max(float(np.abs(a - b).max()) for a, b in zip(mine['maps'], theirs['maps'], strict=True)):.1e}"
        table.append([*row, f"{theirs['s'] / mine['s']:.2f}", gap])
        raw_row = [raw_label, f"{theirs['evals']:,.0f}", f"{theirs['s'] * 1e3:.1f}", f"{theirs['ort'] * 1e3:.2f}"]
        table.append([*raw_row, f"{theirs['s'] / theirs['ort']:.1f}", "—", "—"])
    head = ["method", "evals/image", "ms/image", "ort ms", "×ort", "raw/onnxplain", "max|Δ raw|"]
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    print(f"\nsmall CNN (3×32×32, conv 16 → conv 32 → pool → linear, 10 classes), {count} image(s), predicted class")
    for row in [head, ["-" * w for w in widths], *table]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    print(
        f"\n{date.today()}; load average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
