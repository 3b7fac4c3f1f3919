"""A small Python SDK for the onnxplain HTTP API (HTTP only, via httpx).

Example::

    from client.sdk import Client

    api = Client("http://127.0.0.1:8000", api_key="onx_...")  # or set ONNXPLAIN_API_KEY
    api.register("demo/credit.onnx", card, background="demo/background.csv")
    result = api.explain("credit", [{"income": 52000, ...}], method="kernel_shap")
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx


class ApiError(Exception):
    """An error answer from the API (its problem+json, or V2 error)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("code", "error"))
        self.detail = str(body.get("detail") or body.get("error") or body)
        self.field = body.get("field")
        where = f" [{self.field}]" if self.field else ""
        super().__init__(f"{status} {self.code}{where}: {self.detail}")


def _bytes(source: str | Path | bytes) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


class Client:
    """Talks to one onnxplain server.

    Args:
        url: Base URL, e.g. ``http://127.0.0.1:8000``.
        api_key: The API key (``onnxplain keys add``); ``ONNXPLAIN_API_KEY`` when omitted.
        timeout: Seconds allowed per HTTP call.
    """

    def __init__(
        self, url: str = "http://127.0.0.1:8000", *, api_key: str | None = None, timeout: float = 120.0
    ) -> None:
        self.url = url.rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get("ONNXPLAIN_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            raise ApiError(response.status_code, body)
        return response

    def register(
        self,
        model: str | Path | bytes,
        card: dict[str, Any],
        *,
        background: str | Path | bytes | None = None,
    ) -> dict[str, Any]:
        """Register a model (next version of its card's name); return the model resource."""
        files: dict[str, Any] = {"model": ("model.onnx", _bytes(model), "application/octet-stream")}
        if background is not None:
            files["background"] = ("background", _bytes(background), "application/octet-stream")
        result: dict[str, Any] = self._call("POST", "/v1/models", files=files, data={"card": json.dumps(card)}).json()
        return result

    def models(self) -> list[dict[str, Any]]:
        """Return every model (latest versions), following pagination."""
        out: list[dict[str, Any]] = []
        cursor: str | None = ""
        while cursor is not None:
            page = self._call("GET", "/v1/models", params={"limit": 200, "cursor": cursor}).json()
            out.extend(page["models"])
            cursor = page["next_cursor"]
        return out

    def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Describe a model."""
        params = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._call("GET", f"/v1/models/{name}", params=params).json()
        return result

    def delete(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Delete a model, or one version."""
        params = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._call("DELETE", f"/v1/models/{name}", params=params).json()
        return result

    def clear_quarantine(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Let a quarantined model (every version, or one) serve again; answers the records cleared (admin)."""
        params = {"version": version} if version is not None else {}
        result: dict[str, Any] = self._call("DELETE", f"/v1/models/{name}/quarantine", params=params).json()
        return result

    def predict(
        self, name: str, instances: list[Any], *, version: int | None = None, variant: str | None = None
    ) -> dict[str, Any]:
        """Predict rows (arrays in feature order, or objects keyed by feature name)."""
        body: dict[str, Any] = {"instances": instances}
        if version is not None:
            body["version"] = version
        if variant is not None:
            body["variant"] = variant
        result: dict[str, Any] = self._call("POST", f"/v1/models/{name}:predict", json=body).json()
        return result

    def submit_explain(self, name: str, instances: list[Any], **options: Any) -> dict[str, Any]:
        """POST an explain request; return the result (200) or the job (202)."""
        body = {"instances": instances, **{k: v for k, v in options.items() if v is not None}}
        result: dict[str, Any] = self._call("POST", f"/v1/models/{name}:explain", json=body).json()
        return result

    def explain(
        self,
        name: str,
        instances: list[Any],
        *,
        method: str = "auto",
        parameters: dict[str, Any] | None = None,
        targets: list[str] | None = None,
        version: int | None = None,
        variant: str | None = None,
        wait: float = 10.0,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Explain rows, waiting for the job transparently; return the attribution JSON.

        Raises:
            ApiError: The request was refused, or the job failed or was canceled.
            TimeoutError: The job did not end within ``timeout`` seconds.
        """
        answer = self.submit_explain(
            name,
            instances,
            method=method,
            parameters=parameters,
            targets=targets,
            version=version,
            variant=variant,
            wait=wait,
        )
        if "explanations" in answer:
            return answer
        job = self.wait_job(answer["id"], timeout=timeout)
        result: dict[str, Any] = job["result"]
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        """Return a job's status, progress and result or error."""
        result: dict[str, Any] = self._call("GET", f"/v1/jobs/{job_id}").json()
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job."""
        result: dict[str, Any] = self._call("DELETE", f"/v1/jobs/{job_id}").json()
        return result

    def wait_job(self, job_id: str, *, timeout: float = 600.0, interval: float = 0.25) -> dict[str, Any]:
        """Poll a job until it ends; return it when it succeeded.

        Raises:
            ApiError: The job failed or was canceled (its error).
            TimeoutError: It did not end in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["status"] == "succeeded":
                return job
            if job["status"] in ("failed", "canceled"):
                raise ApiError(int(job["error"].get("status", 422)), job["error"])
            time.sleep(interval)
        raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")

    def build_variant(
        self,
        name: str,
        kind: str,
        *,
        sparsity: float | None = None,
        version: int | None = None,
        wait: bool = True,
        timeout: float = 600.0,
    ) -> dict[str, Any]:
        """Build a quantized or pruned variant; return its state (once built, unless ``wait`` is false).

        Args:
            name: The model.
            kind: ``int8_dynamic``, ``int8_static``, ``fp16``, ``prune_magnitude``, ``prune_structured``
                or ``prune_structured+int8_static``.
            sparsity: For pruned kinds (the server's default is 0.5).
            version: The model version (default: latest).
            wait: Wait for the build job and return the variant's final state (``ready``, ``rejected``).
            timeout: Seconds to wait.

        Raises:
            ApiError: The request was refused, or the build failed.
        """
        body: dict[str, Any] = {"kind": kind}
        if sparsity is not None:
            body["sparsity"] = sparsity
        if version is not None:
            body["version"] = version
        queued: dict[str, Any] = self._call("POST", f"/v1/models/{name}/variants", json=body).json()
        if not wait:
            return queued
        job = self.wait_job(queued["job"]["id"], timeout=timeout)
        state: dict[str, Any] = job["result"]
        return state

    def submit_audit(
        self,
        model: str,
        dataset: str | Path | bytes | list[dict[str, Any]],
        *,
        label: str | None = None,
        sensitive: list[str] | None = None,
        method: str | None = None,
        parameters: dict[str, Any] | None = None,
        positive: str | None = None,
        on_bad_rows: str | None = None,
        thresholds: dict[str, float] | None = None,
        title: str | None = None,
        version: int | None = None,
        variant: str | None = None,
    ) -> dict[str, Any]:
        """Submit an audit of a dataset (a CSV/Parquet/JSON Lines file or bytes, or rows as dicts); return it.

        Raises:
            ApiError: The spec, columns or rows were refused (bad rows are listed in the error).
        """
        options = {
            "label": label,
            "sensitive": sensitive,
            "method": method,
            "parameters": parameters,
            "positive": positive,
            "on_bad_rows": on_bad_rows,
            "thresholds": thresholds,
            "title": title,
            "version": version,
            "variant": variant,
        }
        spec = {"model": model, **{k: v for k, v in options.items() if v is not None}}
        if isinstance(dataset, list):
            response = self._call("POST", "/v1/audits", json={**spec, "rows": dataset})
        else:
            files = {"dataset": ("dataset", _bytes(dataset), "application/octet-stream")}
            response = self._call("POST", "/v1/audits", files=files, data={"spec": json.dumps(spec)})
        result: dict[str, Any] = response.json()
        return result

    def get_audit(self, audit_id: str) -> dict[str, Any]:
        """Return an audit: status, progress, and its summary once done."""
        result: dict[str, Any] = self._call("GET", f"/v1/audits/{audit_id}").json()
        return result

    def cancel_audit(self, audit_id: str) -> dict[str, Any]:
        """Cancel a queued or running audit."""
        result: dict[str, Any] = self._call("DELETE", f"/v1/audits/{audit_id}").json()
        return result

    def wait_audit(
        self,
        audit_id: str,
        *,
        timeout: float = 3600.0,
        interval: float = 0.5,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll an audit until it ends; return it when it succeeded (``on_progress`` sees every poll).

        Raises:
            ApiError: The audit failed or was canceled (its error).
            TimeoutError: It did not end in time.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            audit = self.get_audit(audit_id)
            if on_progress is not None:
                on_progress(audit)
            if audit["status"] == "succeeded":
                return audit
            if audit["status"] in ("failed", "canceled"):
                raise ApiError(int(audit["error"].get("status", 422)), audit["error"])
            time.sleep(interval)
        raise TimeoutError(f"audit {audit_id} did not finish within {timeout:g} s")

    def audit(
        self,
        model: str,
        dataset: str | Path | bytes | list[dict[str, Any]],
        *,
        timeout: float = 3600.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """Submit an audit (``spec``: the options of :meth:`submit_audit`) and wait for it; return it, summarised."""
        submitted = self.submit_audit(model, dataset, **spec)
        return self.wait_audit(submitted["id"], timeout=timeout, on_progress=on_progress)

    def audit_rows(self, audit_id: str, *, format: str = "parquet", out: str | Path | None = None) -> bytes | Path:
        """Download an audit's per-row results (``parquet``, ``csv`` or ``jsonl``), streamed to ``out`` if given."""
        return self._download(f"/v1/audits/{audit_id}/rows", {"format": format}, out)

    def audit_report(self, audit_id: str, *, out: str | Path | None = None) -> bytes | Path:
        """Download an audit's HTML report, to ``out`` if given."""
        return self._download(f"/v1/audits/{audit_id}/report", {}, out)

    def _download(self, path: str, params: dict[str, str], out: str | Path | None) -> bytes | Path:
        with self.http.stream("GET", path, params=params) as response:
            if response.status_code >= 400:
                response.read()
                try:
                    body = response.json()
                except ValueError:
                    body = {"detail": response.text}
                raise ApiError(response.status_code, body)
            if out is None:
                return response.read()
            target = Path(out)
            with target.open("wb") as handle:
                for block in response.iter_bytes():
                    handle.write(block)
            return target

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()
