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


def _storage(settings, prefix: str):
    from limits.storage import storage_from_string

    return storage_from_string(f"onnxplain+{settings.redis_url}", key_prefix=prefix)


def test_a_busy_key_reserves_its_hits_in_leases_and_each_slot_is_counted_once(settings, redis_conn):
    """6,400 a minute: a hit reserves 32 slots in Redis; the next 31 come from the lease; a second process's
    hits take slots after this lease, so no two requests share a count."""
    from limits import RateLimitItemPerMinute
    from limits.strategies import FixedWindowRateLimiter

    first, second = _storage(settings, "onnxplain:test-lease"), _storage(settings, "onnxplain:test-lease")
    item = RateLimitItemPerMinute(6400)
    key = item.key_for("k")
    counts = [first.incr(key, item.get_expiry()) for _ in range(10)]
    assert counts == list(range(1, 11))
    assert int(redis_conn.get(first.prefixed_key(key))) == 32  # one round trip reserved 1–32
    assert second.incr(key, item.get_expiry()) == 33 and int(redis_conn.get(first.prefixed_key(key))) == 64
    assert [first.incr(key, item.get_expiry()) for _ in range(22)][-1] == 32  # this lease's last slot
    assert first.incr(key, item.get_expiry()) == 65  # then a new lease, after the other process's
    limiter = FixedWindowRateLimiter(first)
    assert limiter.hit(item, "k") and limiter.get_window_stats(item, "k").remaining == 6400 - 66
    first.clear(key)
    assert redis_conn.get(first.prefixed_key(key)) is None and first.incr(key, item.get_expiry()) == 1


def test_leases_never_admit_more_than_the_limit_and_shrink_near_it(settings, redis_conn):
    """Two processes hitting one 200-a-minute key 300 times in turn: 200 admitted at most, and at most a few
    slots short of it (leases are 1/64 of what is left, one slot near the end)."""
    from limits import RateLimitItemPerMinute
    from limits.strategies import FixedWindowRateLimiter

    limiters = [FixedWindowRateLimiter(_storage(settings, "onnxplain:test-lease")) for _ in range(2)]
    item = RateLimitItemPerMinute(200)
    admitted = sum(limiters[i % 2].hit(item, "k") for i in range(300))
    assert 196 <= admitted <= 200


def test_a_lease_does_not_outlive_its_window(settings, redis_conn):
    from limits import RateLimitItemPerSecond

    storage = _storage(settings, "onnxplain:test-lease")
    item = RateLimitItemPerSecond(6400)
    key = item.key_for("k")
    assert storage.incr(key, item.get_expiry()) == 1 and storage.incr(key, item.get_expiry()) == 2
    time.sleep(1.1)  # the one-second window ends in Redis; the lease's 30 slots left must not carry over
    assert storage.incr(key, item.get_expiry()) == 1
    assert int(redis_conn.get(storage.prefixed_key(key))) == 32


def test_a_key_not_shaped_like_limits_gets_no_lease(settings, redis_conn):
    storage = _storage(settings, "onnxplain:test-lease")
    assert [storage.incr("plain", 60) for _ in range(3)] == [1, 2, 3]
    assert int(redis_conn.get(storage.prefixed_key("plain"))) == 3


def test_a_busy_key_through_http_keeps_exact_headers_within_one_process(settings, redis_conn):
    """A 6,400-a-minute limit over HTTP: the headers count down by one per request, from the lease."""
    limited = settings.replace(rate_limit="6400/minute")
    client = authorize(create_app(limited).test_client(), issue_key(limited))
    remaining = [int(client.get("/v1/models").headers["RateLimit-Remaining"]) for _ in range(5)]
    assert remaining == [6399, 6398, 6397, 6396, 6395]
    (key,) = redis_conn.keys("*onnxplain:ratelimit*")
    assert int(redis_conn.get(key)) == 32


def test_threads_of_two_processes_never_share_a_slot(settings, redis_conn):
    from concurrent.futures import ThreadPoolExecutor

    from limits import RateLimitItemPerMinute

    storages = [_storage(settings, "onnxplain:test-lease") for _ in range(2)]
    item = RateLimitItemPerMinute(100_000)
    key = item.key_for("k")
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda i: storages[i % 2].incr(key, item.get_expiry()), range(800)))
    assert len(set(counts)) == 800  # every request its own slot of the window
    assert max(counts) <= int(redis_conn.get(storages[0].prefixed_key(key)))


def test_the_limiter_counts_in_memory_while_redis_is_away_and_returns_to_it(tmp_path):
    """A stopped Redis: the limit holds per process, no request fails; restarted, the count is Redis's again."""
    from redis import Redis

    from client.launcher import free_port, start_redis
    from engine.settings import Settings
    from service.limits import KeyLimiter

    port = free_port()
    server = start_redis(port=port)
    try:
        limiter = KeyLimiter(Settings(redis_url=server.url, model_dir=tmp_path, rate_limit="3/minute"))
        counted = limiter.storage.prefixed_key(limiter.items[0].key_for("k"))
        assert limiter.hit("k")[0] and Redis.from_url(server.url).get(counted) == b"1"
        server.stop()
        answers = [limiter.hit("k") for _ in range(4)]  # from memory: this process's 3 a minute
        assert [a[0] for a in answers] == [True, True, True, False]
        assert answers[0][2].remaining == 2 and answers[3][2].remaining == 0
        server = start_redis(port=port)
        time.sleep(1.1)  # the first check for the storage comes 1 s after the failure
        assert limiter.hit("k")[0] and Redis.from_url(server.url).get(counted) == b"1"
    finally:
        server.stop()


def test_several_limits_report_the_tightest_and_a_malformed_one_stops_the_start(settings, redis_conn):
    import pytest

    limited = settings.replace(rate_limit="100/hour;2/minute")
    client = authorize(create_app(limited).test_client(), issue_key(limited))
    first = client.get("/v1/models")
    assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("2", "1")
    assert client.get("/v1/models").status_code == 200
    refused = client.get("/v1/models")
    assert refused.status_code == 429 and refused.headers["RateLimit-Limit"] == "2"
    assert "2 per 1 minute" in refused.json["detail"]
    with pytest.raises(ValueError):
        create_app(settings.replace(rate_limit="plenty"))


def test_threads_that_find_the_lease_spent_wait_for_one_refill(settings, redis_conn):
    """8 threads of one process, 3,200 hits on a 100,000-a-minute key (leases of 32): one thread refills the lease
    while the others wait for it, so Redis counts each hit once and at most one lease goes unused. When each
    thread went to Redis itself, each new lease replaced the last and Redis counted about twice the hits."""
    from concurrent.futures import ThreadPoolExecutor

    from limits import RateLimitItemPerMinute

    storage = _storage(settings, "onnxplain:test-lease")
    item = RateLimitItemPerMinute(100_000)
    key = item.key_for("k")
    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(lambda _: storage.incr(key, item.get_expiry()), range(3200)))
    assert sorted(counts) == list(range(1, 3201))  # every slot Redis counted was used, in order, once
    assert int(redis_conn.get(storage.prefixed_key(key))) <= 3200 + 32
