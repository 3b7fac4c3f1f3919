"""Models are immutable by version: numbers are never reused, and a version in use is not deleted."""

from __future__ import annotations

import io
import json

from tests.conftest import upload


def test_a_deleted_version_number_is_never_given_again(client, binary_model, multiclass_model):
    """Deleting v1 (and then every version) never lets a later upload become v1 or v2 again."""
    assert upload(client, binary_model).json["version"] == 1
    assert client.delete("/v1/models/credit?version=1").json["deleted_versions"] == [1]
    again = upload(client, binary_model)
    assert again.json["version"] == 2
    assert client.delete("/v1/models/credit").json["deleted_versions"] == [2]
    # A different model under the same name: a new number, so ``version: 1`` can never silently mean it.
    other = client.post(
        "/v1/models",
        data={
            "model": (io.BytesIO(multiclass_model.onnx_bytes), "m.onnx"),
            "card": json.dumps({**multiclass_model.card, "name": "credit"}),
        },
        content_type="multipart/form-data",
    )
    assert other.status_code == 201 and other.json["version"] == 3
    assert client.get("/v1/models/credit?version=1").json["code"] == "version_not_found"


def test_a_version_in_use_by_a_queued_job_is_not_deleted(client, binary_model):
    """While an explanation job on v1 is queued (no worker runs here), deleting v1 is 409 model_in_use."""
    assert upload(client, binary_model).status_code == 201
    queued = client.post("/v1/models/credit:explain", json={"instances": [[0, 0, 0, 0]], "method": "exact", "wait": 0})
    assert queued.status_code == 202
    refused = client.delete("/v1/models/credit?version=1")
    assert refused.status_code == 409 and refused.json["code"] == "model_in_use"
    assert client.delete("/v1/models/credit").json["code"] == "model_in_use"
    assert client.get("/v1/models/credit?version=1").status_code == 200
    # Once the job is canceled nothing uses the version any more.
    assert client.delete(queued.headers["Location"]).json["status"] == "canceled"
    assert client.delete("/v1/models/credit?version=1").json["deleted_versions"] == [1]


def test_a_version_in_use_by_a_queued_audit_is_not_deleted(client, binary_model):
    """An audit's merge job holds its model version until it ends."""
    assert upload(client, binary_model).status_code == 201
    rows = [dict(zip(binary_model.card["features"], map(float, r), strict=True)) for r in binary_model.X[:5]]
    audit = client.post("/v1/audits", json={"model": "credit", "method": "exact", "rows": rows})
    assert audit.status_code == 202, audit.json
    refused = client.delete("/v1/models/credit")
    assert refused.status_code == 409 and refused.json["code"] == "model_in_use"
    assert client.delete(audit.headers["Location"]).status_code == 200
    assert client.delete("/v1/models/credit").json["deleted_versions"] == [1]
