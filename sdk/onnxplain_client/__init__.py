"""onnxplain-client: the typed Python client of the onnxplain HTTP API (httpx only).

Example::

    from onnxplain_client import Client

    with Client("http://127.0.0.1:8000", api_key="onx_...") as api:  # or set ONNXPLAIN_API_KEY
        api.register("demo/credit.onnx", card, background="demo/background.csv")
        result = api.explain("credit", [{"income": 52000, ...}], method="kernel_shap")

``AsyncClient`` has the same methods, awaited.
"""

from onnxplain_client._requests import OPERATIONS, Request
from onnxplain_client._transport import RetryPolicy, retry_after_seconds
from onnxplain_client.aio import AsyncClient
from onnxplain_client.client import Client
from onnxplain_client.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
    Unavailable,
    error_for,
)

__all__ = [
    "OPERATIONS",
    "ApiError",
    "AsyncClient",
    "Client",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "NotFound",
    "RateLimited",
    "Request",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "error_for",
    "retry_after_seconds",
]
__version__ = "0.1.0"
