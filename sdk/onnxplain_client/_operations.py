"""The one-call operations, written once for both clients.

``_Operations`` is generic in what a call returns: the sync :class:`~onnxplain_client.Client` returns the
JSON (or text) itself, the :class:`~onnxplain_client.AsyncClient` an awaitable of it. Each method only builds
its :class:`~onnxplain_client._requests.Request` and hands it to the client's ``_json`` / ``_text``, so the two
clients share every path, parameter and body. Composite calls (pagination, waiting for jobs, downloads) live in
each client.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from onnxplain_client import _requests as build
from onnxplain_client._requests import Request, Source

J = TypeVar("J")
"""What a JSON call returns: ``dict[str, Any]`` (sync) or an awaitable of it (async)."""
T = TypeVar("T")
"""What a text call returns: ``str`` (sync) or an awaitable of it (async)."""


class _Operations(Generic[J, T]):
    """Every route that is one HTTP call; names follow :data:`onnxplain_client._requests.OPERATIONS`."""

    def _json(self, request: Request) -> J:
        raise NotImplementedError

    def _text(self, request: Request) -> T:
        raise NotImplementedError

    def livez(self) -> J:
        """Liveness: ``{"status": "ok"}``."""
        return self._json(build.livez())

    def readyz(self) -> J:
        """Readiness of Redis, the stores and the workers (not ready raises ``Unavailable``)."""
        return self._json(build.readyz())

    def metrics(self) -> T:
        """The server's Prometheus metrics (text format)."""
        return self._text(build.metrics())

    def openapi(self) -> T:
        """The server's OpenAPI document (YAML)."""
        return self._text(build.openapi())

    def docs(self) -> T:
        """The server's docs page (HTML)."""
        return self._text(build.docs())

    def register(
        self,
        model: Source,
        card: dict[str, Any],
        *,
        background: Source | None = None,
        tokenizer: Source | None = None,
        visibility: str | None = None,
    ) -> J:
        """Register a model (the next version of its card's name); return the model resource.

        Args:
            model: The ONNX file (path or bytes).
            card: The model card.
            background: Reference rows (CSV or Parquet), needed by sampling methods.
            tokenizer: The ``tokenizers`` JSON of a token-id text model (the card's ``text.tokenizer``).
            visibility: ``private`` (default for a new name) or ``shared`` with every tenant.
        """
        request = build.register(model, card, background=background, tokenizer=tokenizer, visibility=visibility)
        return self._json(request)

    def list_models(self, *, limit: int | None = None, cursor: str | None = None) -> J:
        """One page of models: ``{"models": [...], "next_cursor": ...}``."""
        return self._json(build.list_models(limit=limit, cursor=cursor))

    def model(self, name: str, version: int | None = None) -> J:
        """Describe a model (its variants included)."""
        return self._json(build.model(name, version))

    def delete(self, name: str, version: int | None = None) -> J:
        """Delete every version of a model, or ``version``."""
        return self._json(build.delete(name, version))

    def clear_quarantine(self, name: str, version: int | None = None) -> J:
        """Let a quarantined model (every version, or ``version``) serve again; answers the records cleared."""
        return self._json(build.clear_quarantine(name, version))

    def predict(self, name: str, instances: list[Any], *, version: int | None = None, variant: str | None = None) -> J:
        """Predict rows (arrays in feature order, objects keyed by feature name, base64 images or texts)."""
        return self._json(build.predict(name, instances, version=version, variant=variant))

    def submit_explain(self, name: str, instances: list[Any], **options: Any) -> J:
        """POST an explain request; return the result (200) or the job (202).

        ``options``: ``method``, ``parameters``, ``targets``, ``version``, ``variant``, ``wait``,
        ``callback_url``, ``idempotency_key``.
        """
        return self._json(build.submit_explain(name, instances, **options))

    def submit_counterfactual(self, name: str, instances: list[Any], **options: Any) -> J:
        """POST a counterfactual request; return the result (200) or the job (202).

        ``options``: ``desired``, ``desired_range``, ``constraints``, ``parameters``, ``version``, ``variant``,
        ``wait``, ``idempotency_key``.
        """
        return self._json(build.submit_counterfactual(name, instances, **options))

    def get_surrogate(
        self, name: str, *, version: int | None = None, max_depth: int | None = None, wait: float | None = None
    ) -> J:
        """The model's global surrogate (it has ``fidelity``), or the job computing it (``id``, ``status``)."""
        return self._json(build.surrogate(name, version=version, max_depth=max_depth, wait=wait))

    def submit_variant(self, name: str, kind: str, **options: Any) -> J:
        """Queue a variant build; return ``{"variant": ..., "job": ...}``.

        ``options``: ``sparsity``, ``version``, ``callback_url``, ``idempotency_key``.
        """
        return self._json(build.submit_variant(name, kind, **options))

    def job(self, job_id: str) -> J:
        """A job's status, progress and result or error."""
        return self._json(build.job(job_id))

    def cancel(self, job_id: str) -> J:
        """Cancel a queued or running job."""
        return self._json(build.cancel(job_id))

    def submit_audit(self, model: str, dataset: Source | list[dict[str, Any]], **spec: Any) -> J:
        """Submit an audit of a dataset (file path, bytes, or rows as dicts); return the audit.

        ``spec``: ``label``, ``sensitive``, ``method``, ``parameters``, ``positive``, ``on_bad_rows``,
        ``thresholds``, ``title``, ``version``, ``variant``, ``recourse``, ``variants``, ``callback_url``,
        ``idempotency_key``.
        """
        return self._json(build.submit_audit(model, dataset, **spec))

    def get_audit(self, audit_id: str) -> J:
        """An audit: status, progress, and its summary once done."""
        return self._json(build.get_audit(audit_id))

    def cancel_audit(self, audit_id: str) -> J:
        """Cancel a queued or running audit."""
        return self._json(build.cancel_audit(audit_id))

    def v2_server(self) -> J:
        """V2 (Open Inference Protocol) server metadata."""
        return self._json(build.v2_server())

    def v2_live(self) -> J:
        """V2 liveness."""
        return self._json(build.v2_live())

    def v2_ready(self) -> J:
        """V2 readiness."""
        return self._json(build.v2_ready())

    def v2_model(self, name: str, version: int | None = None) -> J:
        """V2 model metadata (inputs, outputs), of ``version`` when given."""
        return self._json(build.v2_model(name, version))

    def v2_model_ready(self, name: str, version: int | None = None) -> J:
        """V2 model readiness, of ``version`` when given."""
        return self._json(build.v2_model_ready(name, version))

    def v2_infer(self, name: str, body: dict[str, Any], *, version: int | None = None) -> J:
        """V2 inference (JSON tensors)."""
        return self._json(build.v2_infer(name, body, version=version))
