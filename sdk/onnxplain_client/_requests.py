"""The one request-building layer of both clients: every route of ``openapi.yaml`` as a :class:`Request`.

A builder turns a method's arguments into a plain description of the HTTP call (nothing is sent here), so the
sync and async clients cannot disagree on a path, a parameter or a body. Each builder is registered under the
OpenAPI ``operationId`` it implements (:data:`OPERATIONS`); the clients expose it under the builder's name.

A new route: a builder here with ``@operation("<operationId>")``, then a method of that name in
``_Operations`` (``client.py``) for a one-call route, or in both clients for a composite one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

Source = str | Path | bytes
"""A file to upload: its path, or its bytes."""

Expect = Literal["json", "text", "bytes"]

OPERATIONS: dict[str, str] = {}
"""OpenAPI ``operationId`` → the name of the client method (and builder) that calls it."""

F = TypeVar("F", bound=Callable[..., "Request"])


def operation(operation_id: str) -> Callable[[F], F]:
    """Register a builder as the implementation of ``operation_id``."""

    def register(builder: F) -> F:
        OPERATIONS[operation_id] = builder.__name__
        return builder

    return register


@dataclass(frozen=True)
class Request:
    """One HTTP call, before it is sent (and resent on a retry).

    Attributes:
        method: The HTTP method.
        path: The path below the base URL, segments already quoted.
        params: Query parameters (``None`` values are left out).
        json: A JSON body.
        data: Multipart form fields.
        files: Multipart files: field → (filename, bytes, content type).
        headers: Extra headers (``Idempotency-Key``).
        expect: How the success body is read: ``json``, ``text`` or ``bytes``.
    """

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: Expect = "json"

    def httpx_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``httpx.Client.request`` / ``httpx.AsyncClient.request``."""
        out: dict[str, Any] = {"params": {k: v for k, v in self.params.items() if v is not None}}
        if self.json is not None:
            out["json"] = self.json
        if self.data is not None:
            out["data"] = self.data
        if self.files is not None:
            out["files"] = self.files
        if self.headers:
            out["headers"] = self.headers
        return out


def _segment(value: str | int) -> str:
    """One path segment, quoted so that a name can never reach another route."""
    return quote(str(value), safe="")


def _bytes(source: Source) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _binary(name: str, source: Source) -> tuple[str, bytes, str]:
    return (name, _bytes(source), "application/octet-stream")


def _without_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key is not None else {}


# -- health and the contract ---------------------------------------------------------------------------------------


@operation("livez")
def livez() -> Request:
    """Liveness."""
    return Request("GET", "/livez")


@operation("readyz")
def readyz() -> Request:
    """Readiness (a 503 raises :class:`~onnxplain_client.errors.Unavailable`)."""
    return Request("GET", "/readyz")


@operation("metrics")
def metrics() -> Request:
    """The Prometheus metrics (text format)."""
    return Request("GET", "/metrics", expect="text")


@operation("docsAsset")
def docs_asset(name: str) -> Request:
    """One Swagger UI file of the docs page (CSS, JavaScript or PNG)."""
    return Request("GET", f"/docs/assets/{_segment(name)}", expect="bytes")


@operation("openapi")
def openapi() -> Request:
    """The OpenAPI document (YAML text)."""
    return Request("GET", "/openapi.yaml", expect="text")


@operation("docs")
def docs() -> Request:
    """The docs page (HTML text)."""
    return Request("GET", "/docs", expect="text")


# -- models --------------------------------------------------------------------------------------------------------


@operation("registerModel")
def register(
    model: Source,
    card: dict[str, Any],
    *,
    background: Source | None = None,
    tokenizer: Source | None = None,
    visibility: str | None = None,
) -> Request:
    """Register a model with its card (and optional background rows, CSV or Parquet, and the ``tokenizers``
    JSON of a token-id text model)."""
    files = {"model": _binary("model.onnx", model)}
    if background is not None:
        files["background"] = _binary("background", background)
    if tokenizer is not None:
        files["tokenizer"] = ("tokenizer.json", _bytes(tokenizer), "application/json")
    data = _without_none({"card": json.dumps(card), "visibility": visibility})
    return Request("POST", "/v1/models", files=files, data=data)


@operation("listModels")
def list_models(*, limit: int | None = None, cursor: str | None = None) -> Request:
    """One page of models (``next_cursor`` names the next)."""
    return Request("GET", "/v1/models", params={"limit": limit, "cursor": cursor or None})


@operation("getModel")
def model(name: str, version: int | None = None) -> Request:
    """Describe a model (its latest version, or ``version``)."""
    return Request("GET", f"/v1/models/{_segment(name)}", params={"version": version})


@operation("deleteModel")
def delete(name: str, version: int | None = None) -> Request:
    """Delete a model, or one version."""
    return Request("DELETE", f"/v1/models/{_segment(name)}", params={"version": version})


@operation("clearQuarantine")
def clear_quarantine(name: str, version: int | None = None) -> Request:
    """Let a quarantined model (every version, or ``version``) serve again (scope admin)."""
    return Request("DELETE", f"/v1/models/{_segment(name)}/quarantine", params={"version": version})


@operation("predict")
def predict(name: str, instances: list[Any], *, version: int | None = None, variant: str | None = None) -> Request:
    """Predict rows (arrays in feature order, objects keyed by feature, base64 images or texts)."""
    body = _without_none({"instances": instances, "version": version, "variant": variant})
    return Request("POST", f"/v1/models/{_segment(name)}:predict", json=body)


@operation("explain")
def submit_explain(
    name: str,
    instances: list[Any],
    *,
    method: str | None = None,
    parameters: dict[str, Any] | None = None,
    targets: list[str] | None = None,
    version: int | None = None,
    variant: str | None = None,
    wait: float | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> Request:
    """Explain rows: the result (200) within ``wait`` seconds, else the job (202)."""
    body = _without_none(
        {
            "instances": instances,
            "method": method,
            "parameters": parameters,
            "targets": targets,
            "version": version,
            "variant": variant,
            "wait": wait,
            "callback_url": callback_url,
        }
    )
    return Request("POST", f"/v1/models/{_segment(name)}:explain", json=body, headers=_idempotency(idempotency_key))


@operation("counterfactual")
def submit_counterfactual(
    name: str,
    instances: list[Any],
    *,
    desired: str | None = None,
    desired_range: tuple[float | None, float | None] | list[float | None] | None = None,
    constraints: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    version: int | None = None,
    variant: str | None = None,
    wait: float | None = None,
    idempotency_key: str | None = None,
) -> Request:
    """Counterfactuals of rows reaching ``desired`` (a class) or ``desired_range`` (regression) within
    ``constraints`` (``immutable``, ``ranges``, ``directions``, ``integer``, ``categories``): the result (200)
    within ``wait`` seconds, else the job (202)."""
    body = _without_none(
        {
            "instances": instances,
            "desired": desired,
            "desired_range": list(desired_range) if desired_range is not None else None,
            "constraints": constraints,
            "parameters": parameters,
            "version": version,
            "variant": variant,
            "wait": wait,
        }
    )
    path = f"/v1/models/{_segment(name)}:counterfactual"
    return Request("POST", path, json=body, headers=_idempotency(idempotency_key))


@operation("getSurrogate")
def surrogate(
    name: str, *, version: int | None = None, max_depth: int | None = None, wait: float | None = None
) -> Request:
    """The model's global surrogate tree (200), or the job computing it once (202)."""
    params = {"version": version, "max_depth": max_depth, "wait": wait}
    return Request("GET", f"/v1/models/{_segment(name)}/surrogate", params=params)


@operation("createVariant")
def submit_variant(
    name: str,
    kind: str,
    *,
    sparsity: float | None = None,
    version: int | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> Request:
    """Queue a variant build; answers the variant's state and its job."""
    body = _without_none({"kind": kind, "sparsity": sparsity, "version": version, "callback_url": callback_url})
    return Request("POST", f"/v1/models/{_segment(name)}/variants", json=body, headers=_idempotency(idempotency_key))


# -- jobs ----------------------------------------------------------------------------------------------------------


@operation("getJob")
def job(job_id: str) -> Request:
    """A job's status, progress and result or error."""
    return Request("GET", f"/v1/jobs/{_segment(job_id)}")


@operation("cancelJob")
def cancel(job_id: str) -> Request:
    """Cancel a queued or running job."""
    return Request("DELETE", f"/v1/jobs/{_segment(job_id)}")


# -- audits --------------------------------------------------------------------------------------------------------


@operation("submitAudit")
def submit_audit(
    model: str,
    dataset: Source | list[dict[str, Any]],
    *,
    label: str | None = None,
    sensitive: list[str] | None = None,
    method: str | None = None,
    parameters: dict[str, Any] | None = None,
    positive: str | None = None,
    on_bad_rows: str | None = None,
    thresholds: dict[str, float] | None = None,
    title: str | None = None,
    version: int | None = None,
    variant: str | None = None,
    recourse: bool | dict[str, Any] | None = None,
    variants: list[str] | None = None,
    callback_url: str | None = None,
    idempotency_key: str | None = None,
) -> Request:
    """Submit an audit of a dataset: a CSV/Parquet/JSON Lines file (path or bytes), a zip of images with a
    ``labels.csv``, or rows as dicts. ``recourse`` adds the burden of recourse per group; ``variants`` (e.g.
    ``["int8_static", "prune_structured"]``) a compression study comparing each ready variant with fp32."""
    spec = _without_none(
        {
            "model": model,
            "label": label,
            "sensitive": sensitive,
            "method": method,
            "parameters": parameters,
            "positive": positive,
            "on_bad_rows": on_bad_rows,
            "thresholds": thresholds,
            "title": title,
            "version": version,
            "variant": variant,
            "recourse": recourse,
            "variants": variants,
            "callback_url": callback_url,
        }
    )
    headers = _idempotency(idempotency_key)
    if isinstance(dataset, list):
        return Request("POST", "/v1/audits", json={**spec, "rows": dataset}, headers=headers)
    files = {"dataset": _binary("dataset", dataset)}
    return Request("POST", "/v1/audits", files=files, data={"spec": json.dumps(spec)}, headers=headers)


@operation("getAudit")
def get_audit(audit_id: str) -> Request:
    """An audit: status, progress, and its summary once done."""
    return Request("GET", f"/v1/audits/{_segment(audit_id)}")


@operation("cancelAudit")
def cancel_audit(audit_id: str) -> Request:
    """Cancel a queued or running audit."""
    return Request("DELETE", f"/v1/audits/{_segment(audit_id)}")


@operation("getAuditRows")
def audit_rows(audit_id: str, *, format: str = "parquet", variant: str | None = None) -> Request:
    """An audit's per-row results (``parquet``, ``csv`` or ``jsonl``); ``variant``: one variant of its
    compression study instead."""
    params = {"format": format, "variant": variant}
    return Request("GET", f"/v1/audits/{_segment(audit_id)}/rows", params=params, expect="bytes")


@operation("getAuditMap")
def audit_map(audit_id: str, row: int) -> Request:
    """The heatmap PNG an image audit kept for upload row ``row``."""
    return Request("GET", f"/v1/audits/{_segment(audit_id)}/maps/{_segment(row)}", expect="bytes")


@operation("getAuditReport")
def audit_report(audit_id: str) -> Request:
    """An audit's self-contained HTML report."""
    return Request("GET", f"/v1/audits/{_segment(audit_id)}/report", expect="bytes")


# -- the Open Inference Protocol (V2) ------------------------------------------------------------------------------


def _v2_model(name: str, version: int | None) -> str:
    base = f"/v2/models/{_segment(name)}"
    return f"{base}/versions/{_segment(version)}" if version is not None else base


@operation("v2ServerMetadata")
def v2_server() -> Request:
    """V2 server metadata."""
    return Request("GET", "/v2")


@operation("v2Live")
def v2_live() -> Request:
    """V2 liveness."""
    return Request("GET", "/v2/health/live")


@operation("v2Ready")
def v2_ready() -> Request:
    """V2 readiness."""
    return Request("GET", "/v2/health/ready")


@operation("v2ModelMetadata")
def v2_model(name: str, version: int | None = None) -> Request:
    """V2 model metadata (of ``version`` when given)."""
    return Request("GET", _v2_model(name, version))


OPERATIONS["v2ModelVersionMetadata"] = "v2_model"


@operation("v2ModelReady")
def v2_model_ready(name: str, version: int | None = None) -> Request:
    """V2 model readiness (of ``version`` when given)."""
    return Request("GET", f"{_v2_model(name, version)}/ready")


OPERATIONS["v2ModelVersionReady"] = "v2_model_ready"


@operation("v2Infer")
def v2_infer(name: str, body: dict[str, Any], *, version: int | None = None) -> Request:
    """V2 inference: ``body`` is the protocol's request (``inputs``, ``outputs``, ``parameters``)."""
    return Request("POST", f"{_v2_model(name, version)}/infer", json=body)


OPERATIONS["v2InferVersion"] = "v2_infer"
