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

**Gradient methods** (second table): the engine's ``grad_cam``, ``saliency`` and ``integrated_gradients`` as the
worker calls them, on the ONNX graph converted to torch by onnx2torch (once, checked against onnxruntime; not
timed), against raw captum (``LayerGradCam``, ``Saliency``, ``IntegratedGradients``) on the torch module the ONNX
file was exported from, same target, layer, baseline and steps. ``passes`` counts forward-and-backward passes per
image. Integrated gradients' error is against the converged integral (captum, 2,048 steps): the relative L2 error
of the map, and the completeness gap ``|Σ φ − (f(x) − f(0))| / |f(x) − f(0)|``.

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


def build_cnn() -> tuple[bytes, Any]:
    """The small CNN as ONNX bytes (input ``image``: ``(n, 3, 32, 32)``, output ``probabilities``) and as torch."""
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
    return buffer.getvalue(), net


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


def gradient_methods(model: Model, onnx: bytes, net: Any) -> list[tuple[str, int, Run, Run]]:
    """(label, passes, onnxplain run, raw captum run) per gradient method."""
    import torch
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    from engine.methods.gradients import convert, grad_cam, integrated_gradients, saliency
    from engine.models.image import ImageSpec

    spec = ImageSpec(height=SIZE, width=SIZE, channels="RGB", layout="NCHW", scale="unit")
    check = np.random.default_rng(2).random((8, 3, SIZE, SIZE), dtype=np.float32)
    converted = convert(
        onnx, "probabilities", check_inputs=check, reference=lambda x: model.session.run(None, {"image": x})[0]
    )
    last_conv = net[2]

    def nchw(image: FloatArray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(image, -1, 0)[None], dtype=np.float32))

    def ours_cam(image: FloatArray, target: int) -> FloatArray:
        return np.asarray(grad_cam(converted, spec, model, image, [target]).maps[0])

    def raw_cam(image: FloatArray, target: int) -> FloatArray:
        attr = LayerGradCam(net, last_conv).attribute(nchw(image), target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(attr, (SIZE, SIZE), interpolate_mode="bilinear")
        return np.asarray(up.detach().double().numpy().reshape(SIZE, SIZE))

    def ours_saliency(image: FloatArray, target: int) -> FloatArray:
        return np.asarray(saliency(converted, spec, model, image, [target]).maps[0])

    def raw_saliency(image: FloatArray, target: int) -> FloatArray:
        grad = Saliency(net).attribute(nchw(image).requires_grad_(), target=target, abs=True)
        return np.asarray(grad.detach().double().numpy()[0].max(axis=0))

    def ours_ig(image: FloatArray, target: int) -> FloatArray:
        return np.asarray(integrated_gradients(converted, spec, model, image, [target], steps=IG_STEPS).maps[0])

    def raw_ig(image: FloatArray, target: int, steps: int = IG_STEPS) -> FloatArray:
        x = nchw(image)
        attr = IntegratedGradients(net).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=steps, internal_batch_size=steps
        )
        return np.asarray(attr.detach().double().numpy()[0].sum(axis=0))

    return [
        ("grad_cam", 1, ours_cam, raw_cam),
        ("saliency", 1, ours_saliency, raw_saliency),
        (f"integrated_gradients {IG_STEPS}", IG_STEPS, ours_ig, raw_ig),
    ]


IG_STEPS = 64
IG_CONVERGED = 2048  # steps of the reference integral


def gradient_table(model: Model, onnx: bytes, net: Any, images: FloatArray, targets: list[int]) -> list[list[str]]:
    """Rows of the gradient table: ours against raw captum, interleaved per image."""
    table = []
    for label, passes, ours, raw in gradient_methods(model, onnx, net):
        ours(images[-1], targets[-1])
        raw(images[-1], targets[-1])
        mine, theirs, gaps = [], [], []
        maps = []
        for image, target in zip(images[:-1], targets[:-1], strict=True):
            start = time.perf_counter()
            a = ours(image, target)
            mine.append(time.perf_counter() - start)
            start = time.perf_counter()
            b = raw(image, target)
            theirs.append(time.perf_counter() - start)
            gaps.append(float(np.abs(a - b).max()))
            maps.append(a)
        m, t = statistics.median(mine), statistics.median(theirs)
        error, complete = "—", "—"
        if label.startswith("integrated_gradients"):
            errors, gaps_c = [], []
            for a, image, target in zip(maps, images[:-1], targets[:-1], strict=True):
                converged = raw(image, target, IG_CONVERGED)  # type: ignore[call-arg]
                errors.append(float(np.linalg.norm(a - converged) / np.linalg.norm(converged)))
                rise = float(model(image[None])[0, target] - model(np.zeros_like(image)[None])[0, target])
                gaps_c.append(abs(float(a.sum()) - rise) / abs(rise))
            error, complete = f"{max(errors):.1e}", f"{max(gaps_c):.1e}"
        table.append([label, f"{passes:,}", f"{m * 1e3:.2f}", f"{t * 1e3:.2f}", f"{t / m:.2f}", f"{max(gaps):.1e}",
                      error, complete])  # fmt: skip
    return table


def print_table(head: list[str], table: list[list[str]]) -> None:
    """Columns padded to their widest cell, the first left-aligned."""
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    for row in [head, ["-" * w for w in widths], *table]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


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
    onnx, net = build_cnn()
    model = Model(onnx)
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
    print(f"\nsmall CNN (3×32×32, conv 16 → conv 32 → pool → linear, 10 classes), {count} image(s), predicted class")
    print_table(head, table)
    print(f"\ngradient methods on the same CNN (torch via onnx2torch) against raw captum on the exported module, "
          f"{count} image(s), interleaved")  # fmt: skip
    head = ["method", "passes", "ms/image", "captum ms", "captum/onnxplain", "max|Δ captum|", "IG err", "IG gap"]
    print_table(head, gradient_table(model, onnx, net, images, targets))
    print(
        f"IG err: relative L2 error against captum's {IG_CONVERGED}-step integral; IG gap: completeness, "
        "|Σφ − (f(x) − f(0))| / |f(x) − f(0)|"
    )
    print(
        f"\n{date.today()}; load average at end {os.getloadavg()[0]:.2f}; total {time.perf_counter() - started:.0f} s"
    )


if __name__ == "__main__":
    main()
