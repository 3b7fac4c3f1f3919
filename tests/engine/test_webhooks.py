"""Webhook signatures, the callback address policy and the retry schedule (engine.webhooks: no network)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from engine.errors import InvalidRequest
from engine.settings import Settings
from engine.webhooks import (
    accept_callback,
    backoff_s,
    check_callback_url,
    parse_networks,
    retryable,
    sign,
    verify,
)


def resolver(*addresses: str):
    """A resolver answering ``addresses`` for any host, so the policy is checked without DNS or sending."""

    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def test_signature_is_hmac_sha256_over_timestamp_and_body():
    """t=<unix>,v1=<hex of HMAC-SHA256(secret, "t." + body)>, as the README's receiver recomputes it."""
    body = b'{"id":"explain-1","status":"succeeded"}'
    header = sign("s3cret", body, timestamp=1700000000)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify("s3cret", header, body, now=1700000010)
    assert not verify("other", header, body, now=1700000010)
    assert not verify("s3cret", header, body + b" ", now=1700000010)
    assert not verify("s3cret", header, body, now=1700000000 + 301)  # a replay past the tolerance
    assert not verify("s3cret", "v1=abc", body)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/hook",
        "http://[fd00:ec2::254]/",
        "http://192.168.1.5/",
        "http://172.16.0.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[::ffff:127.0.0.1]/",
    ],
)
def test_non_public_literal_addresses_are_refused(url):
    """Loopback, private, link-local, metadata, shared, unspecified and mapped addresses: refused, naming the field."""
    host = (
        url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0] if "[" not in url else url.split("[")[1].split("]")[0]
    )
    with pytest.raises(InvalidRequest) as refused:
        check_callback_url(url, resolve=resolver(host))
    assert (refused.value.code, refused.value.field) == ("callback_url_not_allowed", "callback_url")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "169.254.169.254"])
def test_a_name_resolving_to_a_private_address_is_refused_after_resolution(address):
    """The check is on what the host resolves to: a public-looking name pointing inside is refused."""
    with pytest.raises(InvalidRequest) as refused:
        check_callback_url("https://hooks.example.com/x", resolve=resolver("93.184.216.34", address))
    assert refused.value.code == "callback_url_not_allowed"


def test_public_and_allowlisted_addresses_pass():
    """A public address passes; loopback passes only inside an allowlisted network."""
    target = check_callback_url("https://hooks.example.com:8443/in?x=1", resolve=resolver("93.184.216.34"))
    assert (target.host, target.port, target.address, target.scheme) == (
        "hooks.example.com",
        8443,
        "93.184.216.34",
        "https",
    )
    allow = parse_networks("127.0.0.0/8, 10.20.0.0/16")
    assert check_callback_url("http://127.0.0.1:9/h", allow, resolve=resolver("127.0.0.1")).address == "127.0.0.1"
    with pytest.raises(InvalidRequest):
        check_callback_url("http://10.0.0.1/h", allow, resolve=resolver("10.0.0.1"))


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/x", "file:///etc/passwd", "http:///nohost", "https://user:pw@example.com/", 7, "x" * 3000],
)
def test_malformed_callback_urls(url):
    with pytest.raises(InvalidRequest) as refused:
        check_callback_url(url, resolve=resolver("93.184.216.34"))
    assert (refused.value.code, refused.value.field) == ("invalid_callback_url", "callback_url")


def test_localhost_is_refused_through_the_system_resolver():
    """The real resolver: localhost resolves to loopback, so it is refused like 127.0.0.1."""
    with pytest.raises(InvalidRequest) as refused:
        check_callback_url("http://localhost:8000/hook")
    assert refused.value.code == "callback_url_not_allowed"


def test_accept_callback_needs_a_secret_and_a_valid_allowlist():
    """No secret: webhooks_disabled; a bad allowlist is invalid_setting; no callback_url is None."""
    assert accept_callback(Settings(), None) is None
    with pytest.raises(InvalidRequest) as disabled:
        accept_callback(Settings(), "https://example.com/")
    assert (disabled.value.code, disabled.value.field) == ("webhooks_disabled", "callback_url")
    with pytest.raises(InvalidRequest) as bad:
        accept_callback(Settings(webhook_secret="s", webhook_allow_networks="not-a-net"), "https://example.com/")
    assert bad.value.code == "invalid_setting"


def test_backoff_doubles_up_to_its_cap_and_only_transient_answers_are_retried():
    waits = [backoff_s(n, base_s=1.0, cap_s=10.0) for n in range(1, 7)]
    for wait, base in zip(waits, [1, 2, 4, 8, 10, 10], strict=True):
        assert base <= wait <= base * 1.1
    assert [retryable(s) for s in (500, 502, 503, 408, 429)] == [True] * 5
    assert [retryable(s) for s in (301, 302, 307, 400, 404, 410)] == [False] * 6
