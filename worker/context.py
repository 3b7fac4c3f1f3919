"""Process-wide state of a worker: settings, store and warm sessions.

Workers are RQ ``SimpleWorker``s (no fork per job), so what is cached here
(onnxruntime sessions, background data) survives from one job to the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from engine.models.store import ModelRegistry
from engine.serving import Predictor
from engine.settings import Settings


@dataclass(frozen=True)
class WorkerContext:
    """What job functions share within one worker process."""

    settings: Settings
    registry: ModelRegistry
    predictor: Predictor


@lru_cache(maxsize=1)
def context() -> WorkerContext:
    """Return this process's context, built once from the environment."""
    settings = Settings.from_env()
    registry = ModelRegistry(settings)
    return WorkerContext(settings, registry, Predictor(settings, registry))
