"""The typed result of an explanation: arrays inside, the attribution JSON only at the edge.

:func:`engine.explain.run.run_explanation` returns an :class:`Explanation`; a worker turns it into the
attribution JSON (:meth:`Explanation.to_json`) as the job returns, and an audit reads its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.arrays import FloatArray
from engine.explain.plan import ExplainPlan
from engine.methods.base import Attributions
from engine.models.rows import row_values
from engine.models.store import ModelVersion
from engine.serving import format_predictions


@dataclass(frozen=True)
class BackgroundUse:
    """Which background rows the method compared against."""

    rows: int
    of: int
    sha256: str | None
    constant_features: list[str]


@dataclass(frozen=True)
class Explanation:
    """Attributions of ``n`` rows, ``d`` features and ``k`` model outputs.

    Attributes:
        plan: What was explained.
        model: The model version explained.
        X: ``(n, d)`` the rows, in raw feature space.
        scores: ``(n, k)`` the model's explained output for each row.
        targets: For each row, the output columns explained.
        attributions: The method's arrays: ``values`` ``(n, d, k)``, ``base_values`` and ``output_values``
            ``(n, k)``, ``std_errors`` (sampled methods), per-row ``quality`` and method ``info``.
        background: The background rows used.
        provenance: Versions, provider, seed, elapsed time.
    """

    plan: ExplainPlan
    model: ModelVersion
    X: FloatArray
    scores: FloatArray
    targets: list[list[int]]
    attributions: Attributions
    background: BackgroundUse
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def output_kind(self) -> str:
        """``probability``, ``margin`` or (regression) ``value``: the space the attributions add up in."""
        space = str(self.attributions.info.get("output_space", "probability"))
        return "value" if self.model.card.task == "regression" and space != "margin" else space

    def target_of(self, i: int) -> int:
        """The first explained output column of row ``i`` (audits explain one per row)."""
        return self.targets[i][0]

    def header(self) -> dict[str, Any]:
        """The attribution JSON without its ``explanations``: model, method, parameters, output, provenance."""
        plan, model = self.plan, self.model
        return {
            "model": {"name": model.name, "version": model.version, "sha256": model.sha256, "variant": plan.variant},
            "method": plan.method,
            **({"method_reason": plan.method_reason} if plan.method_reason else {}),
            "parameters": {
                **plan.parameters,
                **{k: v for k, v in self.attributions.info.items() if k != "output_space"},
                "background": {
                    "rows": self.background.rows,
                    "of": self.background.of,
                    "summary": "sample" if self.background.rows < self.background.of else "all",
                    "sha256": self.background.sha256,
                    "constant_features": self.background.constant_features,
                },
            },
            "output": {
                "kind": self.output_kind,
                "targets": plan.targets or (["value"] if self.output_kind == "value" else ["predicted"]),
            },
            "provenance": dict(self.provenance),
        }

    def to_json(self) -> dict[str, Any]:
        """The attribution JSON (``DESIGN.md``; ``openapi.yaml``'s Explanation)."""
        predictions = format_predictions(self.scores, self.model.card.class_names)
        header = self.header()
        provenance = header.pop("provenance")
        explanations = [
            {"prediction": predictions[i], "targets": [self._target(i, k) for k in self.targets[i]]}
            for i in range(len(self.X))
        ]
        return {**header, "explanations": explanations, "provenance": provenance}

    def _target(self, i: int, k: int) -> dict[str, Any]:
        result, card = self.attributions, self.model.card
        values = result.values[i, :, k]
        base = float(result.base_values[i, k])
        output = float(result.output_values[i, k])
        shown = row_values(self.X[i], card)
        attributions = []
        for j, name in enumerate(card.feature_names):
            item: dict[str, Any] = {"feature": name, "value": shown[j], "attribution": float(values[j])}
            if result.std_errors is not None:
                item["std_error"] = float(result.std_errors[i, j, k])
            attributions.append(item)
        name = card.output_names[k]
        quality: dict[str, Any] = {}
        if result.additive:
            residual = output - base - float(np.sum(values))
            quality["additivity_residual"] = residual
            # Local accuracy well past float noise means the answer must not pass as sound.
            if abs(residual) > 1e-3 * max(1.0, abs(output)):
                quality["degraded"] = True
        if result.quality:
            # Per-row quality may hold per-output entries (LIME fits one surrogate per target).
            quality.update(
                {q: v[name] if isinstance(v, dict) and name in v else v for q, v in result.quality[i].items()}
            )
        return {
            "target": name,
            **({"base_value": base} if result.additive else {}),
            "output_value": output,
            "attributions": attributions,
            "quality": quality,
        }
