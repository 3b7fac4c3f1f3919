"""Who may call what: one rule per endpoint, checked before every request.

Every endpoint is listed in :data:`RULES` with the scope it needs, or :data:`PUBLIC`; an endpoint missing from
the table is refused (fail closed), and ``tests/service/test_auth.py`` walks the app's URL map so a new route
without a rule fails the suite. Keys are ``Authorization: Bearer <key>``, checked by :class:`engine.keys.KeyRing`.
"""

from __future__ import annotations

import logging

from flask import Flask, g, request

from engine.errors import Forbidden, Unauthorized
from engine.keys import ADMIN, EXPLAIN, READ, SCOPES, KeyRing, Principal
from engine.models.quarantine import check_runnable
from engine.models.store import ModelVersion
from engine.settings import Settings
from service.extensions import Services

log = logging.getLogger(__name__)

PUBLIC = "public"
"""No key needed: health, metrics, the contract and its docs page."""

RULES: dict[str, str] = {
    "health.livez": PUBLIC,
    "health.readyz": PUBLIC,
    "docs.openapi_yaml": PUBLIC,
    "docs.docs": PUBLIC,
    "docs.docs_asset": PUBLIC,
    # Scraped without a key, as Prometheus does; it names routes, queues and counts, never models, tenants or
    # rows. Keep it off the public side: the README's proxy example answers /metrics only inside.
    "metrics.metrics": PUBLIC,
    "models.register_model": ADMIN,
    "models.list_models": READ,
    "models.get_model": READ,
    "models.delete_model": ADMIN,
    "models.clear_quarantine": ADMIN,
    "models.predict": EXPLAIN,
    "explain.explain": EXPLAIN,
    "explain.get_job": READ,
    "explain.cancel_job": EXPLAIN,
    "recourse.counterfactual": EXPLAIN,
    # Reading a surrogate may start its computation, but at most once per model version and depth, bounded by
    # the background's size and shared by every caller: a read key cannot make the server do unbounded work.
    "recourse.surrogate": READ,
    "variants.create_variant": ADMIN,
    "audits.submit_audit": EXPLAIN,
    "audits.get_audit": READ,
    "audits.cancel_audit": EXPLAIN,
    "audits.audit_rows": READ,
    "audits.audit_report": READ,
    "audits.audit_map": READ,
    "v2.live": PUBLIC,
    "v2.ready": PUBLIC,
    "v2.server_metadata": READ,
    "v2.model_metadata": READ,
    "v2.model_ready": READ,
    "v2.infer": EXPLAIN,
}
"""The scope each endpoint needs."""

LOCAL = Principal(key_id="local", tenant="local", scopes=frozenset(SCOPES))
"""The caller when ``ONNXPLAIN_AUTH=off``: one tenant holding every scope."""


def bearer_key() -> str:
    """Return the key of ``Authorization: Bearer <key>``.

    Raises:
        Unauthorized: ``unauthenticated`` when the header is absent or not a bearer token.
    """
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>'", code="unauthenticated")
    return key.strip()


def principal() -> Principal:
    """Return the caller of the current request (set by the check before it)."""
    found: Principal = g.principal
    return found


def tenant() -> str:
    """Return the current caller's tenant."""
    return principal().tenant


def visible_model(svc: Services, name: str, version: int | None = None) -> ModelVersion:
    """Return a model version the caller's tenant may see (another tenant's private model is 404)."""
    svc.access.check_readable(name, tenant())
    return svc.registry.get(name, version)


def runnable_model(svc: Services, name: str, version: int | None = None, *, manage: bool = False) -> ModelVersion:
    """Return a model version the caller may run (``manage``: and change) that is not quarantined.

    Raises:
        Conflict: ``model_quarantined`` (409), besides what :func:`visible_model` and :func:`managed_model` raise.
    """
    model = managed_model(svc, name, version) if manage else visible_model(svc, name, version)
    check_runnable(model)
    return model


def managed_model(svc: Services, name: str, version: int | None = None) -> ModelVersion:
    """Return a model version the caller's tenant may change (404 unseen, 409 ``model_not_owned``)."""
    svc.access.check_manageable(name, tenant())
    return svc.registry.get(name, version)


def init_auth(app: Flask, settings: Settings, keys: KeyRing) -> None:
    """Install the per-request check of ``app``'s :data:`RULES`."""
    if settings.auth == "off":
        log.warning(
            "AUTHENTICATION IS OFF (ONNXPLAIN_AUTH=off): anyone who can reach this port can register, delete "
            "and explain every model. Use it for local notebooks only; never expose this server."
        )

    @app.before_request
    def _check_access() -> None:
        endpoint = request.endpoint
        if endpoint is None:
            return  # no route matched: routing answers 404 or 405
        rule = RULES.get(endpoint)
        if rule is None:
            raise Forbidden(f"endpoint {endpoint!r} has no access rule", code="no_access_rule")
        if rule == PUBLIC:
            return
        caller = LOCAL if settings.auth == "off" else keys.authenticate(bearer_key())
        caller.require(rule)
        g.principal = caller
