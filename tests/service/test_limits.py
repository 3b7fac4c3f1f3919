"""Per-key rate limits through HTTP, counted in a real Redis."""

from __future__ import annotations

import time

from service.app import create_app
from tests.conftest import authorize, issue_key
from tests.contract import ValidatingClient


def test_past_the_limit_a_key_gets_429_with_retry_after_and_ratelimit_headers(settings, redis_conn):
    """Three requests a minute: the fourth is 429 with Retry-After; another key and health are unaffected."""
    limited = settings.replace(rate_limit="3/minute")
    app = create_app(limited)
    app.test_client_class = ValidatingClient
    a = authorize(app.test_client(), issue_key(limited, "a"))
    b = authorize(app.test_client(), issue_key(limited, "b"))
    answers = [a.get("/v1/models") for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    assert [r.headers["RateLimit-Remaining"] for r in answers] == ["2", "1", "0"]
    assert answers[0].headers["RateLimit-Limit"] == "3"
    assert 0 <= int(answers[0].headers["RateLimit-Reset"]) <= 61  # the window end, rounded up
    refused = a.post("/v1/models/credit:predict", json={"instances": [[1, 2, 3, 4]]})  # the limit spans routes
    assert refused.status_code == 429 and refused.json["code"] == "too_many_requests"
    assert refused.mimetype == "application/problem+json"
    assert 0 < int(refused.headers["Retry-After"]) <= 61  # the window end, rounded up
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert "Retry-After" not in answers[0].headers  # only the 429 (and a 503) say when to retry
    assert b.get("/v1/models").status_code == 200
    assert a.get("/livez").status_code == 200 and a.get("/openapi.yaml").status_code == 200


def test_the_limit_is_shared_by_every_api_process(settings, redis_conn):
    """Two app instances (as two gunicorn workers) count one key's requests together, in Redis."""
    limited = settings.replace(rate_limit="2/minute")
    key = issue_key(limited)
    first, second = (authorize(create_app(limited).test_client(), key) for _ in range(2))
    assert first.get("/v1/models").status_code == 200
    assert second.get("/v1/models").status_code == 200
    assert first.get("/v1/models").status_code == 429
    assert redis_conn.keys("*onnxplain:ratelimit*")  # one counter, in Redis


def test_the_headers_come_from_the_hit_itself_not_from_two_more_reads(settings, redis_conn):
    """The storage answers the window's count and end from its hit's script; other reads still go to Redis."""
    from limits import RateLimitItemPerMinute
    from limits.storage import storage_from_string
    from limits.strategies import FixedWindowRateLimiter

    from service.limits import OneTripRedisStorage

    storage = storage_from_string(f"onnxplain+{settings.redis_url}", key_prefix="onnxplain:test-one-trip")
    assert isinstance(storage, OneTripRedisStorage)
    limiter, item = FixedWindowRateLimiter(storage), RateLimitItemPerMinute(5)
    key = item.key_for("k")
    redis_conn.delete(storage.prefixed_key(key))
    assert limiter.hit(item, "k") and limiter.hit(item, "k")
    redis_conn.set(storage.prefixed_key(key), 4, keepttl=True)  # another process's hits, after this one's
    stats = limiter.get_window_stats(item, "k")
    assert stats.remaining == 3  # as this request left the window: 2 of 5 used
    assert 0 < stats.reset_time - time.time() <= 60
    assert limiter.get_window_stats(item, "k").remaining == 1  # read again: from Redis, the 4 it holds
    assert storage.get(key) == 4 and storage.get_expiry(key) > time.time()
    redis_conn.delete(storage.prefixed_key(key))


def test_an_empty_rate_limit_variable_turns_the_limit_off(settings):
    """``ONNXPLAIN_RATE_LIMIT=`` (as the README says) means no limit, not the default 600/minute."""
    from engine.settings import Settings

    assert Settings.from_env({"ONNXPLAIN_RATE_LIMIT": ""}).rate_limit == ""
    assert Settings.from_env({}).rate_limit == "600/minute"
    unlimited = settings.replace(rate_limit=Settings.from_env({"ONNXPLAIN_RATE_LIMIT": ""}).rate_limit)
    client = authorize(create_app(unlimited).test_client(), issue_key(unlimited))
    answer = client.get("/v1/models")
    assert answer.status_code == 200 and "RateLimit-Limit" not in answer.headers
