"""Predictions from stored models, through warm per-process sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.arrays import FloatArray
from engine.errors import NotFound
from engine.models.card import VARIANT_KINDS
from engine.models.rows import Inputs
from engine.models.store import ModelRegistry, ModelVersion
from engine.runtime.providers import resolve_providers
from engine.runtime.sessions import ModelSession, SessionCache
from engine.settings import Settings
from engine.variants.state import State, gate_of, read_state, resolve, variant_dir


class Predictor:
    """Turns raw-feature rows into predictions for any stored model and variant.

    Args:
        settings: Threads, cache size and execution providers.
        registry: The model store.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self._sessions: SessionCache | None = None

    @property
    def sessions(self) -> SessionCache:
        """The session cache, created on first use (never before a fork)."""
        if self._sessions is None:
            self._sessions = SessionCache(
                self.settings.session_cache_size,
                self.settings.ort_threads,
                resolve_providers(self.settings.providers),
                timeout_s=self.settings.model_call_timeout_s,
                memory_bytes=self.settings.process_memory_bytes,
            )
        return self._sessions

    def session(self, model: ModelVersion, variant: str = "fp32") -> ModelSession:
        """Return the warm session of ``model``'s ``variant`` (a kind, or ``fp32``).

        Raises:
            NotFound: ``variant_not_found`` when the variant is not ready.
        """
        if variant == "fp32":
            return self.sessions.get(model.model_path, model.sha256, model.card, model.signature)
        path = self._variant_path(model, variant)
        return self.sessions.get(path, f"{model.sha256}:{variant}", model.card, model.signature)

    @staticmethod
    def _variant_path(model: ModelVersion, variant: str) -> Path:
        """The ONNX file of a ready variant (a kind).

        Raises:
            NotFound: ``variant_not_found`` when the variant is not ready.
        """
        path = variant_dir(model, variant) / "model.onnx"
        state = read_state(model, variant) if variant in VARIANT_KINDS else None
        if state is None or state.state is not State.READY or not path.exists():
            raise NotFound(
                f"model {model.name!r} v{model.version} has no ready variant {variant!r}",
                code="variant_not_found",
                field="variant",
            )
        return path

    def resolve(self, model: ModelVersion, variant: str) -> tuple[str, ModelSession]:
        """Resolve a requested variant (``fp32``, ``int8``, ``fastest``, a kind) to the served one and its session.

        Raises:
            NotFound: ``variant_not_found`` when it is not ready.
        """
        kind = self.served_variant(model, variant)
        return kind, self.session(model, kind)

    def served_variant(self, model: ModelVersion, variant: str) -> str:
        """:meth:`resolve`'s variant, checked ready, without its session (an explain's API process needs none).

        Raises:
            NotFound: ``variant_not_found`` when it is not ready.
        """
        kind = resolve(model, variant, gate_of(self.settings), allow_drift=self.settings.variant_fastest_allows_drift)
        if kind != "fp32":
            self._variant_path(model, kind)
        return kind

    def predict(
        self, model: ModelVersion, X: Inputs, variant: str = "fp32", *, session: ModelSession | None = None
    ) -> list[dict[str, Any]]:
        """Predict rows in raw feature space, unit images or texts (by the card's input kind).

        Args:
            model: The model version.
            X: The rows.
            variant: The served variant (a kind, or ``fp32``).
            session: Its session when the caller has it already (from :meth:`resolve`): one cache lookup less.

        Returns:
            Per row, ``{"label", "scores"}`` for a classifier or ``{"value"}``
            for a regressor.
        """
        scores = (session or self.session(model, variant)).scores(X)
        return format_predictions(scores, model.card.class_names)


def format_predictions(scores: FloatArray, class_names: tuple[str, ...]) -> list[dict[str, Any]]:
    """Format an ``(n, k)`` score matrix as prediction objects."""
    # tolist() makes every Python float in one C call: a float() per numpy scalar was most of 64 rows' cost.
    if not class_names:
        return [{"value": v} for v in scores[:, 0].tolist()]
    labels = scores.argmax(axis=1).tolist()
    return [
        {"label": class_names[label], "scores": dict(zip(class_names, row, strict=True))}
        for label, row in zip(labels, scores.tolist(), strict=True)
    ]
