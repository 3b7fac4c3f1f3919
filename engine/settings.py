"""Configuration: one frozen :class:`Settings`, read from ``ONNXPLAIN_*`` variables.

This is the only module that reads the environment. The API and the workers
build their settings with :meth:`Settings.from_env` and pass the object down.

Example::

    settings = Settings.from_env({"ONNXPLAIN_MODEL_DIR": "/srv/models"})
    settings.model_dir  # PosixPath('/srv/models')
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import InvalidRequest

PREFIX = "ONNXPLAIN_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the service; the env variable is ``ONNXPLAIN_<FIELD>``."""

    redis_url: str | None = None
    """Redis for the job queues (``redis://host:port/db``). Unset: the launcher
    starts an embedded server; the API then reports not-ready without it."""

    redis_connect_timeout_s: float = 1.0
    """Seconds to connect to Redis before the call fails (API: 503 with Retry-After; workers: retried)."""

    redis_timeout_s: float = 1.5
    """Seconds a Redis command may take in the API before it fails, so a stalled Redis answers 503 within
    2 s instead of holding request threads. Waiting for a job's result uses its own, longer timeout."""

    model_dir: Path = field(default_factory=lambda: Path("var/models"))
    """Directory of the model store, laid out ``name/version/model.onnx``."""

    audit_dir: Path = field(default_factory=lambda: Path("var/audits"))
    """Directory where audits keep their dataset, per-row results and report."""

    audit_chunk_rows: int = 500
    """Rows per audit chunk job (the unit of scale-out and of retry)."""

    max_audit_rows: int = 1_000_000
    """Most rows in one audit dataset."""

    max_audit_zip_files: int = 10_000
    """Most members of an image audit's zip (images and the ``labels.csv`` manifest)."""

    max_audit_zip_bytes: int = 256 * 1024 * 1024
    """Most bytes an image audit's zip may expand to, all members together (a zip bomb stops here)."""

    variant_min_top1: float = 0.99
    """Fidelity gate for classifier variants: least top-1 agreement with fp32."""

    variant_max_norm_error: float = 0.02
    """Fidelity gate for regressor variants: largest max|Δ| / fp32 output range."""

    variant_min_drift_spearman: float = 0.9
    """Least median Spearman rank correlation of a variant's attributions with fp32's
    (``explanation_drift.spearman_median``, and over every row in an audit's compression study);
    below it the report says ``drift_flagged``."""

    variant_fastest_allows_drift: bool = False
    """Whether ``fastest`` may pick a variant whose report is ``drift_flagged`` (``true``/``false``)."""

    max_model_bytes: int = 64 * 1024 * 1024
    """Largest accepted upload (model + card + background), checked before buffering."""

    max_body_bytes: int = 8 * 1024 * 1024
    """Largest accepted JSON request body for predict and explain."""

    max_rows: int = 1000
    """Most rows in one predict or explain request."""

    max_background_rows: int = 100_000
    """Most rows in an uploaded background data set."""

    max_tokenizer_bytes: int = 16 * 1024 * 1024
    """Largest ``tokenizer`` part (a ``tokenizers`` JSON file) a token-id text model may be registered with."""

    background_summary_rows: int = 100
    """Background rows kept for explainers (k-means summary when larger)."""

    probe_timeout_s: float = 30.0
    """Time allowed to the child process that loads and probes an upload."""

    probe_memory_bytes: int = 4 * 1024 * 1024 * 1024
    """Address-space cap of that child process."""

    process_memory_bytes: int = 8 * 1024 * 1024 * 1024
    """Address-space cap (``RLIMIT_AS``) of every API worker and RQ worker process, set at start (0: none).
    A model call that needs more fails with ``model_memory_limit`` instead of growing the process."""

    model_call_timeout_s: float = 60.0
    """Limit of one onnxruntime call in the API and the workers (0: none); past it the call is terminated
    and fails with ``model_time_limit``."""

    job_timeout_s: int = 120
    """Hard limit on one interactive explanation job."""

    batch_job_timeout_s: int = 1800
    """Hard limit on one batch job (audit chunk, variant build)."""

    result_ttl_s: int = 86_400
    """How long finished job results stay readable (RQ's default is 500 s)."""

    failure_ttl_s: int = 7 * 86_400
    """How long failed jobs and their errors stay readable."""

    rate_limit: str = "600/minute"
    """Requests each API key may make across all routes, counted in Redis; empty: none.

    In limits' notation: ``600/minute``, or several as ``10/second;600/minute``."""

    rate_limit_timeout_s: float = 0.1
    """Seconds the rate limiter waits on Redis (connect or command; a counter takes well under 1 ms). Past it the
    limiter fails open to counting in each API process's memory until Redis answers again, so a stalled Redis
    never holds a request: predict goes on, what needs Redis answers 503 itself. Its first failure costs a request
    one of these, and each recovery check (1, 2, 4, … 32 s apart) one more, hence short."""

    interactive_queue_cap: int = 1000
    """Most jobs waiting on the interactive queue; past it, submissions are 503 ``queue_full`` with Retry-After."""

    batch_queue_cap: int = 100_000
    """Most jobs waiting on the batch queue (an audit adds one per chunk, plus its merge)."""

    interactive_queued_ttl_s: int = 600
    """How long a queued explanation may wait for a worker before it expires unrun: by then nobody waits for it
    (a ``wait`` is capped at ``max_wait_s``, and a client polling a 202 gives up long before)."""

    queue_full_retry_after_s: int = 5
    """The ``Retry-After`` of a 503 ``queue_full``."""

    default_wait_s: float = 5.0
    """How long ``:explain`` waits for its job when the request does not say."""

    max_wait_s: float = 60.0
    """Cap on the ``wait`` a request may ask for."""

    max_waiting_requests: int = 4
    """Requests per API process that may hold a thread waiting for their job (``wait``); past it a request answers
    202 with its job at once. Keep it below the process's threads (``ONNXPLAIN_API_THREADS``, 8): the rest stay
    free for predict and health, however many clients wait."""

    max_concurrent_uploads: int = 2
    """Uploads per API process whose trial run (up to ``probe_timeout_s``) may hold a thread at once; past it an
    upload is 503 ``uploads_busy`` with ``Retry-After``."""

    ort_threads: int = 1
    """onnxruntime intra-op threads per session (1 is best for single rows)."""

    session_cache_size: int = 16
    """onnxruntime sessions kept warm per process (LRU)."""

    providers: str = "auto"
    """Execution providers: ``auto`` (CUDA when present, else CPU) or a
    comma-separated list of onnxruntime provider names."""

    max_explain_rows: int = 100
    """Most rows in one explain request (audits take more, in chunks)."""

    max_explain_pixels: int = 16 * 224 * 224
    """Most image pixels (height × width, all images together) in one explain request: the job payload
    carries them as bytes (one per channel value for PNG/JPEG inputs), so this bounds what Redis holds."""

    max_explain_features: int = 200
    """Most features the sampling methods (kernel_shap, permutation, lime) accept."""

    max_model_evaluations: int = 5_000_000
    """Most model rows one explain request may cost (rows × samples × background),
    estimated before it is queued; more is 422 ``too_expensive``."""

    auth: str = "on"
    """``on``: every route but health and docs needs ``Authorization: Bearer <key>``; ``off`` (local
    notebooks only) serves everyone as tenant ``local`` with every scope, and logs a warning saying so."""

    keys_file: Path = field(default_factory=lambda: Path("var/keys.json"))
    """The API keys file (hashes only; ``onnxplain keys add|list|revoke`` writes it; re-read when it changes)."""

    keys_secret: str = ""
    """Server secret of the keys' HMAC-SHA256; empty: read from ``<keys_file>.secret`` (created by ``keys add``)."""

    webhook_secret: str = ""
    """HMAC-SHA256 key that signs webhook deliveries (``Onnxplain-Signature``); empty: ``callback_url`` is refused
    (422 ``webhooks_disabled``). ``onnxplain up`` generates one for its session."""
    webhook_allow_networks: str = ""
    """Comma-separated networks (CIDR) a ``callback_url`` may resolve into although they are loopback, private,
    link-local or metadata addresses (e.g. ``10.20.0.0/16`` for an internal receiver); empty: none."""
    webhook_max_attempts: int = 8
    """Deliveries tried per webhook before it is given up (kept in the dead-letter list)."""
    webhook_backoff_s: float = 2.0
    """Wait before the first retry of a failed delivery; it doubles with each attempt."""
    webhook_max_backoff_s: float = 3600.0
    """The longest wait between two attempts."""
    webhook_timeout_s: float = 10.0
    """Seconds one delivery (connect, send, answer) may take."""

    log_format: str = "json"
    """``json``: one JSON object per log line (``ts``, ``level``, ``logger``, ``message``, ``request_id``, and the
    fields of request and job lines); ``text``: the classic ``asctime level name message`` lines."""

    metrics_redis_timeout_s: float = 0.5
    """Connect and read timeout of the Redis calls ``/metrics`` makes (queue depths, worker tallies): a stalled
    Redis costs a scrape at most about this long, and the scrape still answers (``onnxplain_redis_up 0``)."""

    ready_requires_workers: bool = True
    """``/readyz`` is 503 while a queue has no live worker (``checks`` names it). Turn off where the API's
    readiness must not follow the workers (predictions need none; explain jobs would wait in the queue)."""

    worker_ttl_s: int = 60
    """A worker counts as live (``/readyz``, ``onnxplain_workers_live``) while its last heartbeat is younger than
    this. Workers beat every ``worker_ttl_s - 15`` s when idle and every ``--job-monitoring-interval`` while busy;
    give API and workers the same value."""

    def redis_options(self, *, read_timeout_s: float | None = None) -> dict[str, Any]:
        """Keyword arguments for ``redis.Redis.from_url``: the one place Redis timeouts are decided.

        Args:
            read_timeout_s: Read timeout for a connection that blocks on purpose (waits, worker dequeues);
                :attr:`redis_timeout_s` when omitted.
        """
        return {
            "socket_connect_timeout": self.redis_connect_timeout_s,
            "socket_timeout": self.redis_timeout_s if read_timeout_s is None else read_timeout_s,
            "health_check_interval": 30,
        }

    def __post_init__(self) -> None:
        # Made absolute once, against the working directory at start: Flask's send_file
        # resolves a relative path against the app package, so var/audits/... was served
        # from service/var/audits/... (a 500). No other module needs to think about it.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Path) and not value.is_absolute():
                object.__setattr__(self, f.name, value.expanduser().absolute())
        if self.log_format not in ("json", "text"):
            raise InvalidRequest(
                f"{PREFIX}LOG_FORMAT must be 'json' or 'text', not {self.log_format!r}",
                code="invalid_setting",
                field=PREFIX + "LOG_FORMAT",
            )
        if self.auth not in ("on", "off"):
            raise InvalidRequest(
                f"{PREFIX}AUTH must be 'on' or 'off', not {self.auth!r}", code="invalid_setting", field=PREFIX + "AUTH"
            )

    def replace(self, **changes: object) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``ONNXPLAIN_*`` variables.

        Args:
            env: The environment to read; ``os.environ`` when omitted.

        Returns:
            The settings, defaults filled in.

        Raises:
            InvalidRequest: A variable does not parse as its field's type.
        """
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw == "" and f.name in _EMPTY_IS_A_VALUE:
                values[f.name] = ""
                continue
            if raw is None or raw == "":
                continue
            kind = Path if f.name.endswith(("_dir", "_file")) else type(getattr(_DEFAULTS, f.name))
            try:
                if kind is bool:  # bool("false") is True: read the word
                    values[f.name] = _BOOLS[raw.strip().lower()]
                else:
                    values[f.name] = kind(raw) if f.name != "redis_url" else raw
            except (ValueError, KeyError) as exc:
                raise InvalidRequest(
                    f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}",
                    code="invalid_setting",
                    field=PREFIX + f.name.upper(),
                ) from exc
        return cls(**values)  # type: ignore[arg-type]


_DEFAULTS = Settings(redis_url="")
_EMPTY_IS_A_VALUE = frozenset({"rate_limit"})
"""Fields an empty variable sets (``ONNXPLAIN_RATE_LIMIT=`` turns the limit off); elsewhere empty means unset."""
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
