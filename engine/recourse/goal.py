"""The outcome a counterfactual must reach: a class, or a range of a regression's value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.arrays import BoolArray, FloatArray


@dataclass(frozen=True)
class Goal:
    """A desired outcome.

    Attributes:
        target: The output column of the desired class (classification), or ``None``.
        low, high: The desired value range of a regression (``None``: open).
    """

    target: int | None = None
    low: float | None = None
    high: float | None = None

    def reached(self, scores: FloatArray) -> BoolArray:
        """Whether each row of ``(n, k)`` model outputs has the outcome: the class predicted (its score is the
        highest), or the value within the range."""
        scores = np.atleast_2d(scores)
        if self.target is not None:
            return np.asarray(np.argmax(scores, axis=1) == self.target, dtype=bool)
        value = scores[:, 0]
        ok = np.ones(len(value), dtype=bool)
        if self.low is not None:
            ok &= value >= self.low
        if self.high is not None:
            ok &= value <= self.high
        return ok

    def to_json(self, output_names: list[str]) -> Any:
        """The goal as the answer shows it: the class name, or ``{"range": [low, high]}``."""
        if self.target is not None:
            return output_names[self.target]
        return {"range": [self.low, self.high]}
