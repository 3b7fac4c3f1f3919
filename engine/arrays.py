"""The array types every engine module annotates with (defined once here)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
"""Rows, scores, attributions: float64 throughout the engine."""

IntArray = npt.NDArray[np.int64]
"""Stored integers (tree node indices, row numbers)."""

IndexArray = npt.NDArray[np.intp]
"""Positions used to index other arrays (numpy's native index width)."""
