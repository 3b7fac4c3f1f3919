"""A small Python SDK for the onnxplain HTTP API (HTTP only, via httpx).

Example::

    from client.sdk import Client

    api = Client("http://127.0.0.1:8000")
    api.register("demo/credit.onnx", card, background="demo/background.csv")
    result = api.explain("credit", [{"income": 52000, ...}], method="kernel_shap")
"""

from __future__ import annotations

import json
import time
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
        timeout: Seconds allowed per HTTP call.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=timeout)

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

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self.http.close()
