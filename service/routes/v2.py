"""Open Inference Protocol (V2) routes, as KServe and Triton clients speak it.

``tritonclient.http`` sends JSON without a Content-Type, and by default the
binary tensor extension: the JSON header's length is in
``Inference-Header-Content-Length`` and raw little-endian tensor bytes
follow. Errors answer ``{"error": "..."}`` (see ``service/errors.py``).
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify, request

from engine.errors import InvalidRequest
from engine.models.screening import Port
from engine.models.store import ModelVersion
from service.auth import runnable_model, visible_model
from service.bodies import ROW_FIELDS, body_bytes, check_object, parse_int
from service.extensions import services
from service.json_text import read_json

bp = Blueprint("v2", __name__)

_DATATYPES: dict[str, tuple[str, Any]] = {
    "tensor(float)": ("FP32", np.float32),
    "tensor(double)": ("FP64", np.float64),
    "tensor(float16)": ("FP16", np.float16),
    "tensor(int64)": ("INT64", np.int64),
    "tensor(int32)": ("INT32", np.int32),
    "tensor(int8)": ("INT8", np.int8),
    "tensor(uint8)": ("UINT8", np.uint8),
    "tensor(bool)": ("BOOL", np.bool_),
    "tensor(string)": ("BYTES", np.object_),
}
_BY_NAME = {name: dtype for name, dtype in _DATATYPES.values()}
_HEADER = "Inference-Header-Content-Length"


def _tensor_ports(ports: tuple[Port, ...]) -> list[Port]:
    return [p for p in ports if p.type in _DATATYPES]


def _port_json(port: Port) -> dict[str, Any]:
    return {
        "name": port.name,
        "datatype": _DATATYPES[port.type][0],
        "shape": [d if isinstance(d, int) else -1 for d in port.shape],
    }


def _model(name: str, version: str | None, *, run: bool = False) -> ModelVersion:
    """The named version; ``run``: one that may run (a quarantined version is 409)."""
    number = None if version is None else parse_int(version, "version")
    return runnable_model(services(), name, number) if run else visible_model(services(), name, number)


@bp.get("/v2/health/live")
def live() -> Response:
    """Server liveness."""
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def ready() -> tuple[Response, int]:
    """Server readiness: the model store is readable."""
    ok = services().registry.root.is_dir()
    return jsonify({"ready": ok}), 200 if ok else 503


@bp.get("/v2")
def server_metadata() -> Response:
    """Server metadata."""
    return jsonify({"name": "onnxplain", "version": "0.1.0", "extensions": ["binary_tensor_data"]})


@bp.get("/v2/models/<model_name:name>")
@bp.get("/v2/models/<model_name:name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    """Model metadata: versions, platform and tensor inputs/outputs."""
    model = _model(name, version)
    return jsonify(
        {
            "name": model.name,
            "versions": [str(v) for v in services().registry.versions(name)],
            "platform": "onnxruntime_onnx",
            "inputs": [_port_json(p) for p in _tensor_ports(model.signature.inputs)],
            "outputs": [_port_json(p) for p in _tensor_ports(model.signature.outputs)],
        }
    )


@bp.get("/v2/models/<model_name:name>/ready")
@bp.get("/v2/models/<model_name:name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    """Model readiness (200 when it exists, loads and is not quarantined)."""
    model = _model(name, version, run=True)
    services().predictor.session(model)
    return jsonify({"name": model.name, "ready": True})


@bp.post("/v2/models/<model_name:name>/infer")
@bp.post("/v2/models/<model_name:name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    """Run the model on V2 tensors (JSON data or the binary extension)."""
    model = _model(name, version, run=True)
    raw = body_bytes()
    header_length = request.headers.get(_HEADER)
    split = len(raw) if header_length is None else parse_int(header_length, _HEADER, minimum=0, maximum=len(raw))
    body = read_json(raw[:split], limit=split, non_finite_ok=ROW_FIELDS)
    body = check_object(body, {"id", "inputs", "outputs", "parameters"}, required={"inputs"})
    if "id" in body and not isinstance(body["id"], str):
        raise InvalidRequest("id must be a string", code="invalid_parameter", field="id")
    _parameters(body, "parameters")
    feeds = _read_inputs(body["inputs"], model, raw, split)
    ports = _tensor_ports(model.signature.outputs)
    wanted = _requested_outputs(body, ports)
    session = services().predictor.session(model)
    values = session.run(feeds, [name for name, _ in wanted])
    outputs, blobs = [], []
    for (out_name, binary), value in zip(wanted, values, strict=True):
        array = np.asarray(value)
        datatype = _DATATYPES[next(p.type for p in ports if p.name == out_name)][0]
        entry: dict[str, Any] = {"name": out_name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = _to_bytes(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = [v.decode() if isinstance(v, bytes) else v for v in array.flatten().tolist()]
        outputs.append(entry)
    result: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version), "outputs": outputs}
    if "id" in body:
        result["id"] = body["id"]
    head = json.dumps(result).encode()
    if not blobs:
        return Response(head, mimetype="application/json")
    response = Response(head + b"".join(blobs), mimetype="application/octet-stream")
    response.headers[_HEADER] = str(len(head))
    return response


_MAX_ELEMENTS = 2**31  # more values than any request body can carry


def _parameters(item: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``parameters`` object of a V2 request or tensor: an object of scalars."""
    params = item.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict) or not all(isinstance(v, str | int | float | bool) for v in params.values()):
        raise InvalidRequest(f"{where} must be an object of scalar values", code="invalid_parameter", field=where)
    return params


def _flag(params: dict[str, Any], key: str, where: str, default: bool) -> bool:
    value = params.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{where}.{key} must be true or false", code="invalid_parameter", field=f"{where}.{key}")
    return value


def _requested_outputs(body: dict[str, Any], ports: list[Port]) -> list[tuple[str, bool]]:
    names = {p.name for p in ports}
    default_binary = _flag(_parameters(body, "parameters"), "binary_data_output", "parameters", False)
    requested = body.get("outputs")
    if requested is None or requested == []:
        return [(p.name, default_binary) for p in ports]
    if not isinstance(requested, list):
        raise InvalidRequest("outputs must be a list", code="invalid_json", field="outputs")
    wanted = []
    for i, item in enumerate(requested):
        where = f"outputs[{i}]"
        item = check_object(item, {"name", "parameters"}, required={"name"}, where=where)
        if not isinstance(item["name"], str) or item["name"] not in names:
            raise InvalidRequest(
                f"the model has no tensor output {str(item['name'])[:80]!r}", code="unknown_output", field=where
            )
        params = _parameters(item, f"{where}.parameters")
        wanted.append((item["name"], _flag(params, "binary_data", f"{where}.parameters", default_binary)))
    return wanted


def _read_inputs(items: object, model: ModelVersion, raw: bytes, offset: int) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise InvalidRequest("inputs must be a non-empty list", code="invalid_json", field="inputs")
    ports = {p.name: p for p in model.signature.inputs}
    feeds: dict[str, np.ndarray] = {}
    for i, item in enumerate(items):
        where = f"inputs[{i}]"
        item = check_object(
            item,
            {"name", "shape", "datatype", "data", "parameters"},
            required={"name", "shape", "datatype"},
            where=where,
        )
        port = ports.get(item["name"]) if isinstance(item["name"], str) else None
        if port is None:
            raise InvalidRequest(
                f"the model has no input {str(item['name'])[:80]!r}", code="unknown_input", field=f"{where}.name"
            )
        if port.name in feeds:
            raise InvalidRequest(f"input {port.name!r} is given twice", code="duplicate_input", field=f"{where}.name")
        expected = _DATATYPES.get(port.type, ("?", None))[0]
        if item["datatype"] != expected:
            raise InvalidRequest(
                f"input {port.name!r} takes {expected}, got {str(item['datatype'])[:40]}",
                code="wrong_datatype",
                field=f"{where}.datatype",
            )
        shape = item["shape"]
        # bool is an int in Python: [true, 10] is no shape. The product is exact (Python ints), never int64.
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(type(d) is int and 0 <= d <= _MAX_ELEMENTS for d in shape)
            or math.prod(shape) > _MAX_ELEMENTS
        ):
            raise InvalidRequest(
                f"shape must be a list of at most 8 non-negative integers holding at most {_MAX_ELEMENTS} values",
                code="invalid_shape",
                field=f"{where}.shape",
            )
        size = _parameters(item, f"{where}.parameters").get("binary_data_size")
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(raw):
                raise InvalidRequest("binary_data_size runs past the body", code="invalid_binary_data", field=where)
            array = _from_bytes(raw[offset : offset + size], expected, where)
            offset += size
        elif "data" in item:
            dtype = _BY_NAME[expected]
            if not isinstance(item["data"], list):
                raise InvalidRequest("data must be a list", code="invalid_data", field=f"{where}.data")
            try:
                array = np.asarray(item["data"], dtype=dtype).reshape(-1)
            except (ValueError, TypeError, OverflowError) as exc:
                raise InvalidRequest(
                    f"data does not fit {expected}: {str(exc)[:200]}", code="invalid_data", field=f"{where}.data"
                ) from exc
            if expected == "BYTES":
                array = np.asarray([str(v) for v in array], dtype=object)
        else:
            raise InvalidRequest("give data or binary_data_size", code="missing_field", field=where)
        if math.prod(shape) != array.size:
            raise InvalidRequest(f"shape {shape} does not hold {array.size} values", code="invalid_shape", field=where)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise InvalidRequest(f"input {port.name!r} holds NaN or infinity", code="non_finite", field=where)
        feeds[port.name] = array.reshape(shape)
    missing = [p for p in ports if p not in feeds]
    if missing:
        raise InvalidRequest(f"input {missing[0]!r} is missing", code="missing_input", field="inputs")
    return feeds


def _from_bytes(blob: bytes, datatype: str, where: str) -> np.ndarray:
    if datatype != "BYTES":
        dtype = np.dtype(_BY_NAME[datatype]).newbyteorder("<")
        if len(blob) % dtype.itemsize:
            raise InvalidRequest(
                "binary data is not a whole number of elements", code="invalid_binary_data", field=where
            )
        return np.frombuffer(blob, dtype=dtype).astype(dtype.newbyteorder("="))
    values, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise InvalidRequest("truncated BYTES element", code="invalid_binary_data", field=where)
        (length,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise InvalidRequest("truncated BYTES element", code="invalid_binary_data", field=where)
        values.append(blob[pos : pos + length].decode("utf-8", errors="replace"))
        pos += length
    return np.asarray(values, dtype=object)


def _to_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(array, dtype=np.dtype(_BY_NAME[datatype]).newbyteorder("<")).tobytes()
    parts = []
    for value in array.flatten():
        data = value if isinstance(value, bytes) else str(value).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)
