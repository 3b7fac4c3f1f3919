"""The synchronous client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from onnxplain_client import _requests as build
from onnxplain_client._operations import _Operations
from onnxplain_client._requests import Request, Source
from onnxplain_client._transport import RetryPolicy, client_headers, error_of, settled

Progress = Callable[[dict[str, Any]], None]


class Client(_Operations[dict[str, Any], str]):
    """Talks to one onnxplain server (every route of its ``openapi.yaml``).

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: The API key; ``ONNXPLAIN_API_KEY`` when omitted.
        timeout: Seconds allowed per HTTP call.
        retries: How often a 429 or 503 is retried (honouring ``Retry-After``).
        max_retry_wait: The longest wait before one retry, in seconds.
        transport: An httpx transport (tests, proxies); default: httpx's.

    Raises (from every call):
        ApiError: A subclass by status (``InvalidRequest``, ``NotFound``...) carrying ``code``, ``status``, ``field``.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = RetryPolicy(retries=retries, max_wait=max_retry_wait)
        self.http = httpx.Client(
            base_url=self.url, timeout=timeout, headers=client_headers(api_key, dict(os.environ)), transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()

    def send(self, request: Request) -> httpx.Response:
        """Send a request, retrying 429/503 as the policy says; return the (read) success response.

        Raises:
            ApiError: The final answer was an error.
        """
        attempt = 0
        while True:
            response = self.http.request(request.method, request.path, **request.httpx_arguments())
            wait = self.retry.delay(attempt, response)
            if wait is None:
                break
            time.sleep(wait)
            attempt += 1
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def _json(self, request: Request) -> dict[str, Any]:
        found: dict[str, Any] = self.send(request).json()
        return found

    def _text(self, request: Request) -> str:
        return self.send(request).text

    # -- composite calls -------------------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """Every model (latest versions), following pagination."""
        out: list[dict[str, Any]] = []
        cursor: str | None = ""
        while cursor is not None:
            page = self.list_models(limit=200, cursor=cursor)
            out.extend(page["models"])
            cursor = page["next_cursor"]
        return out

    def explain(
        self, name: str, instances: list[Any], *, wait: float = 10.0, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Explain rows, waiting for the job transparently; return the attribution JSON.

        ``options`` are :meth:`submit_explain`'s (``method``, ``parameters``, ``targets``, ...).

        Raises:
            ApiError: The request was refused, or the job failed or was canceled.
            TimeoutError: The job did not end within ``timeout`` seconds.
        """
        answer = self.submit_explain(name, instances, wait=wait, **options)
        if "explanations" in answer:
            return answer
        result: dict[str, Any] = self.wait_job(answer["id"], timeout=timeout)["result"]
        return result

    def counterfactual(
        self, name: str, instances: list[Any], *, wait: float = 10.0, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Counterfactuals of rows, waiting for the job transparently; return the answer (``rows``).

        ``options`` are :meth:`submit_counterfactual`'s (``desired``, ``desired_range``, ``constraints``, ...).

        Raises:
            ApiError: The request was refused, or the job failed or was canceled.
            TimeoutError: The job did not end within ``timeout`` seconds.
        """
        answer = self.submit_counterfactual(name, instances, wait=wait, **options)
        if "rows" in answer and "id" not in answer:
            return answer
        result: dict[str, Any] = (self.wait_job(answer["id"], timeout=timeout))["result"]
        return result

    def surrogate(
        self, name: str, *, version: int | None = None, max_depth: int | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """The model's global surrogate tree (fidelity, rules), waiting for its one-time computation."""
        answer = self.get_surrogate(name, version=version, max_depth=max_depth, wait=10)
        if "fidelity" in answer:
            return answer
        result: dict[str, Any] = (self.wait_job(answer["id"], timeout=timeout))["result"]
        return result

    def wait_job(
        self, job_id: str, *, timeout: float = 600.0, interval: float = 0.25, on_poll: Progress | None = None
    ) -> dict[str, Any]:
        """Poll a job until it ends; return it when it succeeded (``on_poll`` sees every poll).

        Raises:
            ApiError: The job failed or was canceled (its error).
            TimeoutError: It did not end in time.
        """
        return self._poll(self.job, job_id, "job", timeout, interval, on_poll)

    def build_variant(
        self, name: str, kind: str, *, wait: bool = True, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Build a quantized or pruned variant; return its final state (or, ``wait=False``, the queued answer).

        Args:
            name: The model.
            kind: ``int8_dynamic``, ``int8_static``, ``fp16``, ``prune_magnitude``, ``prune_structured``
                or ``prune_structured+int8_static``.
            wait: Wait for the build job and return the variant's final state (``ready``, ``rejected``).
            timeout: Seconds to wait.
            **options: :meth:`submit_variant`'s (``sparsity``, ``version``, ``callback_url``...).
        """
        queued = self.submit_variant(name, kind, **options)
        if not wait:
            return queued
        state: dict[str, Any] = self.wait_job(queued["job"]["id"], timeout=timeout)["result"]
        return state

    def wait_audit(
        self, audit_id: str, *, timeout: float = 3600.0, interval: float = 0.5, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Poll an audit until it ends; return it when it succeeded (``on_progress`` sees every poll).

        Raises:
            ApiError: The audit failed or was canceled (its error).
            TimeoutError: It did not end in time.
        """
        return self._poll(self.get_audit, audit_id, "audit", timeout, interval, on_progress)

    def audit(
        self,
        model: str,
        dataset: Source | list[dict[str, Any]],
        *,
        timeout: float = 3600.0,
        on_progress: Progress | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """Submit an audit (``spec``: :meth:`submit_audit`'s options) and wait for it; return it, summarised."""
        submitted = self.submit_audit(model, dataset, **spec)
        return self.wait_audit(submitted["id"], timeout=timeout, on_progress=on_progress)

    def audit_rows(
        self, audit_id: str, *, format: str = "parquet", out: str | Path | None = None, variant: str | None = None
    ) -> bytes | Path:
        """Download an audit's per-row results (``parquet``, ``csv`` or ``jsonl``), streamed to ``out`` if given.

        ``variant``: the rows of one variant of the audit's compression study instead.
        """
        return self._download(build.audit_rows(audit_id, format=format, variant=variant), out)

    def docs_asset(self, name: str, *, out: str | Path | None = None) -> bytes | Path:
        """Download one Swagger UI file of the docs page (``swagger-ui.css``, ...), to ``out`` if given."""
        return self._download(build.docs_asset(name), out)

    def audit_map(self, audit_id: str, row: int, *, out: str | Path | None = None) -> bytes | Path:
        """Download the heatmap PNG an image audit kept for upload row ``row``, to ``out`` if given."""
        return self._download(build.audit_map(audit_id, row), out)

    def audit_report(self, audit_id: str, *, out: str | Path | None = None) -> bytes | Path:
        """Download an audit's HTML report, to ``out`` if given."""
        return self._download(build.audit_report(audit_id), out)

    def _poll(
        self,
        fetch: Callable[[str], dict[str, Any]],
        resource_id: str,
        what: str,
        timeout: float,
        interval: float,
        on_poll: Progress | None,
    ) -> dict[str, Any]:
        """GET a job or audit until it ends (``settled``); every answer is shown to ``on_poll``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = fetch(resource_id)
            if on_poll is not None:
                on_poll(found)
            if settled(found):
                return found
            time.sleep(interval)
        raise TimeoutError(f"{what} {resource_id} did not finish within {timeout:g} s")

    def _download(self, request: Request, out: str | Path | None) -> bytes | Path:
        if out is None:
            return self.send(request).content
        with self.http.stream(request.method, request.path, **request.httpx_arguments()) as response:
            if response.status_code >= 400:
                response.read()
                raise error_of(response)
            target = Path(out)
            with target.open("wb") as handle:
                for block in response.iter_bytes():
                    handle.write(block)
            return target
