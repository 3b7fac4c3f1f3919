"""The API's side of the webhook outbox: a submission with a ``callback_url`` leaves a delivery record in Redis.

The workers deliver it (:mod:`worker.webhooks`) once the job or audit has ended; the record format and keys are
:mod:`engine.webhooks`'.
"""

from __future__ import annotations

import time

from redis import Redis
from redis.exceptions import RedisError

from engine.errors import Unavailable
from engine.webhooks import OUTBOX, RECORDS, Delivery


def schedule(connection: Redis, delivery: Delivery, *, due: float | None = None) -> None:
    """Put a delivery in the outbox (due now unless ``due``, unix seconds).

    Raises:
        Unavailable: Redis cannot be reached.
    """
    try:
        with connection.pipeline() as pipeline:
            pipeline.hset(RECORDS, delivery.id, delivery.to_json())
            pipeline.zadd(OUTBOX, {delivery.id: time.time() if due is None else due})
            pipeline.execute()
    except RedisError as exc:
        raise Unavailable(f"Redis is unavailable: {exc}", code="unavailable") from exc
