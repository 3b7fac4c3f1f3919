"""Webhooks, the pure part: signatures, the address policy of callback URLs, the retry schedule, the outbox's
record format. No Redis and no HTTP here: the API writes outbox records, the workers deliver them.

Signature scheme (documented in the README): each delivery carries

    Onnxplain-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    Onnxplain-Delivery: <delivery id, the same on every retry>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant time and
refuses old timestamps (replays).

Address policy: a callback URL is ``http`` or ``https`` with a host; every address its host resolves to must be
public. Loopback, private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254 included), shared,
multicast, reserved and unspecified addresses are refused unless the operator allowlists their network. The check
runs at submission and again before each delivery, which then connects to the checked address itself, so a
DNS answer that changes in between (rebinding) cannot redirect a delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from engine.errors import InvalidRequest
from engine.settings import Settings

SIGNATURE_HEADER = "Onnxplain-Signature"
DELIVERY_HEADER = "Onnxplain-Delivery"
OUTBOX = "onnxplain:webhooks:due"
"""Sorted set: delivery id → when it is next due (unix seconds; a claimed one is leased into the future)."""
RECORDS = "onnxplain:webhooks:records"
"""Hash: delivery id → its :class:`Delivery` as JSON."""
DEAD = "onnxplain:webhooks:dead"
"""List of deliveries given up (JSON, newest first, capped)."""
FIELD = "callback_url"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not public, not "private" to Python


def sign(secret: str, body: bytes, *, timestamp: int | None = None) -> str:
    """Return the ``Onnxplain-Signature`` value of ``body``: ``t=<unix>,v1=<hex>``."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify(secret: str, header: str, body: bytes, *, tolerance_s: int = 300, now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made within ``tolerance_s`` seconds (the receiver's
    check, as in the README)."""
    parts = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp=t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def parse_networks(text: str) -> tuple[Network, ...]:
    """The allowlisted networks of ``ONNXPLAIN_WEBHOOK_ALLOW_NETWORKS`` (comma-separated CIDRs).

    Raises:
        InvalidRequest: ``invalid_setting`` naming the variable.
    """
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in text.split(",") if item.strip())
    except ValueError as exc:
        raise InvalidRequest(
            f"ONNXPLAIN_WEBHOOK_ALLOW_NETWORKS: {exc}", code="invalid_setting", field="ONNXPLAIN_WEBHOOK_ALLOW_NETWORKS"
        ) from exc


def is_public(address: IPAddress) -> bool:
    """Whether an address is a public unicast one (not loopback, private, link-local, metadata, shared...)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return not (
        address in _METADATA
        or address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv4Address) and address in _SHARED)
        or not address.is_global
    )


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system's resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidRequest("callback_url's host does not resolve", code="invalid_callback_url", field=FIELD) from exc
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Target:
    """A callback URL that passed the policy, and the address a delivery connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: str


def check_callback_url(url: object, allow: Iterable[Network] = (), *, resolve: Resolver = system_resolver) -> Target:
    """Check a callback URL against the address policy, after DNS resolution; return where to deliver.

    Args:
        url: The request's ``callback_url``.
        allow: Networks allowed although not public (the operator's allowlist).
        resolve: Host → addresses (the system resolver; tests pass their own to check without any network).

    Raises:
        InvalidRequest: ``invalid_callback_url`` (not an http(s) URL with a host; credentials in it; a host that
            does not resolve) or ``callback_url_not_allowed`` (an address that is not public), field ``callback_url``.
    """
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidRequest("callback_url must be an http(s) URL", code="invalid_callback_url", field=FIELD)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest(
            "callback_url must be an http(s) URL with a host", code="invalid_callback_url", field=FIELD
        )
    if parts.username or parts.password:
        raise InvalidRequest("callback_url may not carry credentials", code="invalid_callback_url", field=FIELD)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise InvalidRequest(f"callback_url: {exc}", code="invalid_callback_url", field=FIELD) from exc
    networks = tuple(allow)
    addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolve(parts.hostname, port)]
    if not addresses:
        raise InvalidRequest("callback_url's host does not resolve", code="invalid_callback_url", field=FIELD)
    for address in addresses:
        if not is_public(address) and not any(address in network for network in networks):
            raise InvalidRequest(
                "callback_url resolves to an address that is not public (loopback, private, link-local or metadata)"
                " and is not allowlisted",
                code="callback_url_not_allowed",
                field=FIELD,
            )
    return Target(url, parts.scheme, parts.hostname, port, str(addresses[0]))


def backoff_s(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first): ``base × 2^(attempt-1)``,
    capped, with up to 10 % jitter added so that receivers coming back are not hit all at once."""
    wait = float(min(cap_s, base_s * 2 ** max(0, attempt - 1)))
    return wait + wait * 0.1 * secrets.randbelow(1000) / 1000


def retryable(status: int) -> bool:
    """Whether a receiver's answer is worth another attempt: 5xx, 408 and 429. A redirect (never followed) or
    another 4xx is final."""
    return status >= 500 or status in (408, 429)


@dataclass(frozen=True)
class Delivery:
    """One webhook in the outbox: what to send where, and how often it was tried.

    Attributes:
        id: The delivery id (``Onnxplain-Delivery``), the same on every attempt.
        resource: ``job`` or ``audit``.
        resource_id: The job or audit id.
        tenant: Who submitted it.
        url: The callback URL.
        attempts: Attempts made so far.
        last_error: Why the last attempt failed.
    """

    id: str
    resource: str
    resource_id: str
    tenant: str
    url: str
    attempts: int = 0
    last_error: str | None = None

    @classmethod
    def new(cls, resource: str, resource_id: str, tenant: str, url: str) -> Delivery:
        """A delivery not yet tried, under a fresh id."""
        return cls(f"whd-{secrets.token_hex(12)}", resource, resource_id, tenant, url)

    def to_json(self) -> str:
        """The record stored in :data:`RECORDS`."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Delivery:
        """Read a stored record."""
        return cls(**json.loads(text))


def accept_callback(settings: Settings, value: object) -> str | None:
    """The request's ``callback_url`` once it passed the policy (``None`` when the request has none).

    Raises:
        InvalidRequest: ``webhooks_disabled`` (the server has no ``ONNXPLAIN_WEBHOOK_SECRET``), or the policy's
            codes (:func:`check_callback_url`); field ``callback_url``.
    """
    if value is None:
        return None
    if not settings.webhook_secret:
        raise InvalidRequest(
            "this server sends no webhooks (ONNXPLAIN_WEBHOOK_SECRET is not set)", code="webhooks_disabled", field=FIELD
        )
    return check_callback_url(value, parse_networks(settings.webhook_allow_networks)).url
