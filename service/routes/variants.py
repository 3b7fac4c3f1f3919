"""Variant routes (quantized and pruned) (``/v1/models/{name}/variants``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from engine.errors import Unavailable
from engine.jobs import JOBS
from engine.models.store import ModelVersion
from engine.variants import state as variants
from engine.variants.build import check_buildable
from engine.variants.prune import check_sparsity
from engine.variants.state import State
from engine.webhooks import accept_callback
from service.auth import principal, runnable_model
from service.bodies import json_object, optional_int
from service.extensions import Services, services
from service.gateways.jobs import check_idempotency_key
from service.observe import VARIANTS_REQUESTED
from service.routes.explain import job_location

bp = Blueprint("variants", __name__)


def submit_variant(
    svc: Services,
    model: ModelVersion,
    kind: str,
    tenant: str,
    idempotency: str | None = None,
    sparsity: float | None = None,
    callback: str | None = None,
) -> dict[str, Any]:
    """Enqueue the build of one variant (on the batch queue) and return the job's view, with ``cache``.

    Raises:
        InvalidRequest: The variant cannot be built for this model (or ``sparsity`` is wrong).
        Unavailable: Redis cannot be reached.
    """
    check_buildable(model, kind, sparsity)
    gateway = svc.jobs()
    payload: dict[str, Any] = {"model": model.name, "version": model.version, "sha256": model.sha256, "kind": kind}
    if sparsity is not None:
        payload["sparsity"] = sparsity
    current = variants.read_state(model, kind)
    submission = gateway.submit(
        JOBS["variant"],
        payload,
        timeout=svc.settings.batch_job_timeout_s,
        tenant=tenant,
        idempotency=idempotency,
        uses=(model.name, model.version),
        callback=callback,
    )
    job = submission.job
    VARIANTS_REQUESTED.labels(kind).inc()
    if current is None or current.rebuildable:
        variants.write_state(model, kind, State.BUILDING, error=None, job=job.id)
    return {**gateway.describe(job, location=job_location(job.id)), "cache": submission.cache}


def request_card_variants(svc: Services, model: ModelVersion, tenant: str) -> None:
    """Queue the variants a card asks for at registration; record why one could not be queued."""
    for kind in model.card.variants:
        try:
            submit_variant(svc, model, variants.check_kind(kind), tenant)
        except Unavailable as exc:
            variants.write_state(model, kind, State.FAILED, error=exc.to_dict())


@bp.post("/v1/models/<model_name:name>/variants")
def create_variant(name: str) -> tuple[Response, int, dict[str, str]]:
    """Build a quantized or pruned variant as a job: 202 with the job and the variant's state.

    Errors: 404 model/version; 415; 422 ``nothing_to_quantize``, ``nothing_to_prune``,
    ``variant_unsupported``, ``background_required``, bad kind or ``sparsity``; 503 Redis.
    """
    svc = services()
    body = json_object({"kind", "version", "sparsity", "callback_url"}, required={"kind"})
    model = runnable_model(svc, name, optional_int(body.get("version"), "version"), manage=True)
    kind = variants.check_kind(body["kind"])
    sparsity = body.get("sparsity")
    idempotency = check_idempotency_key(request.headers.get("Idempotency-Key"))
    callback = accept_callback(svc.settings, body.get("callback_url"))
    job = submit_variant(
        svc,
        model,
        kind,
        principal().tenant,
        idempotency,
        None if sparsity is None else check_sparsity(sparsity),
        callback,
    )
    state = variants.read_state(model, kind)
    body = {"variant": state.to_dict() if state else None, "job": job}
    return jsonify(body), 202, {"Location": job["location"], "X-Cache": job["cache"]}
