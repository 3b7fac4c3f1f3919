"""The asynchronous client: the same operations as :class:`~onnxplain_client.Client`, awaited."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from onnxplain_client import _requests as build
from onnxplain_client._operations import _Operations
from onnxplain_client._requests import Request, Source
from onnxplain_client._transport import RetryPolicy, client_headers, error_of, settled

Progress = Callable[[dict[str, Any]], None]


class AsyncClient(_Operations[Awaitable[dict[str, Any]], Awaitable[str]]):
    """Talks to one onnxplain server from asyncio code; every method is awaited.

    Args: as :class:`~onnxplain_client.Client` (``transport`` an ``httpx.AsyncBaseTransport``).
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 3,
        max_retry_wait: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retry = RetryPolicy(retries=retries, max_wait=max_retry_wait)
        self.http = httpx.AsyncClient(
            base_url=self.url, timeout=timeout, headers=client_headers(api_key, dict(os.environ)), transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self.http.aclose()

    async def send(self, request: Request) -> httpx.Response:
        """Send a request, retrying 429/503 as the policy says; return the (read) success response.

        Raises:
            ApiError: The final answer was an error.
        """
        attempt = 0
        while True:
            response = await self.http.request(request.method, request.path, **request.httpx_arguments())
            wait = self.retry.delay(attempt, response)
            if wait is None:
                break
            await asyncio.sleep(wait)
            attempt += 1
        if response.status_code >= 400:
            raise error_of(response)
        return response

    async def _json(self, request: Request) -> dict[str, Any]:
        found: dict[str, Any] = (await self.send(request)).json()
        return found

    async def _text(self, request: Request) -> str:
        return (await self.send(request)).text

    # -- composite calls (as Client's) -----------------------------------------------------------------------------

    async def models(self) -> list[dict[str, Any]]:
        """Every model (latest versions), following pagination."""
        out: list[dict[str, Any]] = []
        cursor: str | None = ""
        while cursor is not None:
            page = await self.list_models(limit=200, cursor=cursor)
            out.extend(page["models"])
            cursor = page["next_cursor"]
        return out

    async def explain(
        self, name: str, instances: list[Any], *, wait: float = 10.0, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Explain rows, waiting for the job; return the attribution JSON (see ``Client.explain``)."""
        answer = await self.submit_explain(name, instances, wait=wait, **options)
        if "explanations" in answer:
            return answer
        result: dict[str, Any] = (await self.wait_job(answer["id"], timeout=timeout))["result"]
        return result

    async def counterfactual(
        self, name: str, instances: list[Any], *, wait: float = 10.0, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Counterfactuals of rows, waiting for the job transparently; return the answer (``rows``).

        ``options`` are :meth:`submit_counterfactual`'s (``desired``, ``desired_range``, ``constraints``, ...).

        Raises:
            ApiError: The request was refused, or the job failed or was canceled.
            TimeoutError: The job did not end within ``timeout`` seconds.
        """
        answer = await self.submit_counterfactual(name, instances, wait=wait, **options)
        if "rows" in answer and "id" not in answer:
            return answer
        result: dict[str, Any] = (await self.wait_job(answer["id"], timeout=timeout))["result"]
        return result

    async def surrogate(
        self, name: str, *, version: int | None = None, max_depth: int | None = None, timeout: float = 600.0
    ) -> dict[str, Any]:
        """The model's global surrogate tree (fidelity, rules), waiting for its one-time computation."""
        answer = await self.get_surrogate(name, version=version, max_depth=max_depth, wait=10)
        if "fidelity" in answer:
            return answer
        result: dict[str, Any] = (await self.wait_job(answer["id"], timeout=timeout))["result"]
        return result

    async def wait_job(
        self, job_id: str, *, timeout: float = 600.0, interval: float = 0.25, on_poll: Progress | None = None
    ) -> dict[str, Any]:
        """Poll a job until it ends; return it when it succeeded (see ``Client.wait_job``)."""
        return await self._poll(self.job, job_id, "job", timeout, interval, on_poll)

    async def build_variant(
        self, name: str, kind: str, *, wait: bool = True, timeout: float = 600.0, **options: Any
    ) -> dict[str, Any]:
        """Build a variant; return its final state (see ``Client.build_variant``)."""
        queued = await self.submit_variant(name, kind, **options)
        if not wait:
            return queued
        state: dict[str, Any] = (await self.wait_job(queued["job"]["id"], timeout=timeout))["result"]
        return state

    async def wait_audit(
        self, audit_id: str, *, timeout: float = 3600.0, interval: float = 0.5, on_progress: Progress | None = None
    ) -> dict[str, Any]:
        """Poll an audit until it ends; return it when it succeeded (see ``Client.wait_audit``)."""
        return await self._poll(self.get_audit, audit_id, "audit", timeout, interval, on_progress)

    async def audit(
        self,
        model: str,
        dataset: Source | list[dict[str, Any]],
        *,
        timeout: float = 3600.0,
        on_progress: Progress | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """Submit an audit and wait for it; return it, summarised."""
        submitted = await self.submit_audit(model, dataset, **spec)
        return await self.wait_audit(submitted["id"], timeout=timeout, on_progress=on_progress)

    async def audit_rows(
        self, audit_id: str, *, format: str = "parquet", out: str | Path | None = None, variant: str | None = None
    ) -> bytes | Path:
        """Download an audit's per-row results (``parquet``, ``csv`` or ``jsonl``), streamed to ``out`` if given.

        ``variant``: the rows of one variant of the audit's compression study instead.
        """
        return await self._download(build.audit_rows(audit_id, format=format, variant=variant), out)

    async def docs_asset(self, name: str, *, out: str | Path | None = None) -> bytes | Path:
        """Download one Swagger UI file of the docs page (``swagger-ui.css``, ...), to ``out`` if given."""
        return await self._download(build.docs_asset(name), out)

    async def audit_map(self, audit_id: str, row: int, *, out: str | Path | None = None) -> bytes | Path:
        """Download the heatmap PNG an image audit kept for upload row ``row``, to ``out`` if given."""
        return await self._download(build.audit_map(audit_id, row), out)

    async def audit_report(self, audit_id: str, *, out: str | Path | None = None) -> bytes | Path:
        """Download an audit's HTML report, to ``out`` if given."""
        return await self._download(build.audit_report(audit_id), out)

    async def _poll(
        self,
        fetch: Callable[[str], Awaitable[dict[str, Any]]],
        resource_id: str,
        what: str,
        timeout: float,
        interval: float,
        on_poll: Progress | None,
    ) -> dict[str, Any]:
        """GET a job or audit until it ends (``settled``); every answer is shown to ``on_poll``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = await fetch(resource_id)
            if on_poll is not None:
                on_poll(found)
            if settled(found):
                return found
            await asyncio.sleep(interval)
        raise TimeoutError(f"{what} {resource_id} did not finish within {timeout:g} s")

    async def _download(self, request: Request, out: str | Path | None) -> bytes | Path:
        if out is None:
            return (await self.send(request)).content
        async with self.http.stream(request.method, request.path, **request.httpx_arguments()) as response:
            if response.status_code >= 400:
                await response.aread()
                raise error_of(response)
            target = Path(out)
            with target.open("wb") as handle:
                async for block in response.aiter_bytes():
                    handle.write(block)
            return target
