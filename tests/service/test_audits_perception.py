"""Audits of image and text models over HTTP, the SDK and the CLI, with real workers.

Texts: JSON Lines with a ``text`` column; the summary's word importance per class must put the planted
sentiment words on top. Images: a zip of PNGs with ``labels.csv``; each row keeps its map and heatmap file and
the report holds a contact sheet. Hostile zips (traversal, bombs, too many members) are 4xx with codes.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from client.cli import main
from engine.models.image import encode_png
from onnxplain_client import Client
from tests import deep_models
from tests.conftest import ValidatingClient, authorize, poll
from tests.service.test_explain_perception import DIGITS_CARD, TEXT_CARD, register


def submit(client, dataset: bytes, spec: dict, name: str = "dataset"):
    data = {"dataset": (io.BytesIO(dataset), name), "spec": json.dumps(spec)}
    return client.post("/v1/audits", data=data, content_type="multipart/form-data")


def jsonl(records: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in records) + "\n").encode()


def image_zip(images: np.ndarray, labels: np.ndarray, *, extra: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    manifest = pd.DataFrame(
        {"file": [f"img/{i}.png" for i in range(len(images))], "digit": labels, "site": ["a", "b"] * (len(images) // 2)}
    )
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("labels.csv", manifest.to_csv(index=False))
        for i, image in enumerate(images):
            archive.writestr(f"img/{i}.png", __import__("base64").b64decode(encode_png(image)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cnn() -> deep_models.ImageModel:
    pytest.importorskip("torch")
    return deep_models.digits_cnn()


def test_text_audit_summarises_word_importance_per_class(live_client):
    model = deep_models.tfidf_classifier()
    assert register(live_client, model.onnx_bytes, TEXT_CARD).status_code == 201
    texts, labels = deep_models.sentences(16, seed=5)
    records = [
        {"text": t, "y": ["negative", "positive"][int(y)], "group": "g1" if i % 2 else "g2"}
        for i, (t, y) in enumerate(zip(texts, labels, strict=True))
    ]
    spec = {"model": "reviews", "method": "occlusion", "label": "y", "sensitive": ["group"]}
    accepted = submit(live_client, jsonl(records), spec)
    assert accepted.status_code == 202, accepted.json
    audit = poll(live_client, accepted.headers["Location"])
    assert audit["status"] == "succeeded", audit
    summary = audit["summary"]
    assert summary["rows"] == 16 and summary["input_kind"] == "text"
    assert summary["performance"]["accuracy"] >= 0.9
    words = summary["word_importance"]
    assert words["positive"][0]["word"] in deep_models.POSITIVE
    assert words["negative"][0]["word"] in deep_models.NEGATIVE
    assert summary["faithfulness"]["better_than_random"] >= 0.5
    rows = [
        json.loads(line) for line in live_client.get(f"/v1/audits/{audit['id']}/rows?format=jsonl").data.splitlines()
    ]
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    first = json.loads(rows[0]["attributions"])
    assert rows[0]["text"][first[0]["start"] : first[0]["end"]] == first[0]["token"]
    report = live_client.get(f"/v1/audits/{audit['id']}/report").data.decode()
    assert "Word importance per predicted class" in report and "Contact sheet" in report
    assert words["positive"][0]["word"] in report


def test_image_audit_keeps_each_map_and_a_contact_sheet(live_client, live_settings, cnn):
    pytest.importorskip("captum")
    assert register(live_client, cnn.onnx_bytes, {**DIGITS_CARD, "name": "digits-audit"}).status_code == 201
    images, labels = cnn.images[:12], cnn.labels[:12]
    spec = {"model": "digits-audit", "method": "grad_cam", "label": "digit", "sensitive": ["site"], "positive": "3"}
    accepted = submit(live_client, image_zip(images, labels), spec)
    assert accepted.status_code == 202, accepted.json
    audit = poll(live_client, accepted.headers["Location"])
    assert audit["status"] == "succeeded", audit
    assert audit["summary"]["rows"] == 12 and audit["summary"]["input_kind"] == "image"
    assert audit["summary"]["performance"]["accuracy"] >= 0.8
    frame = pd.read_parquet(io.BytesIO(live_client.get(f"/v1/audits/{audit['id']}/rows").data))
    assert len(frame) == 12
    from engine.explain.visual import decode_map

    for _, row in frame.iterrows():
        assert decode_map(json.loads(row["map"])).shape == (8, 8)
        assert (live_settings.audit_dir / audit["id"] / row["map_file"]).read_bytes()[:4] == b"\x89PNG"
    fetched = live_client.get(f"/v1/audits/{audit['id']}/maps/{int(frame['row'][3])}")
    assert fetched.status_code == 200 and fetched.mimetype == "image/png" and fetched.data[:4] == b"\x89PNG"
    missing = live_client.get(f"/v1/audits/{audit['id']}/maps/999")
    assert missing.status_code == 404 and missing.json["code"] == "map_not_found"
    report = live_client.get(f"/v1/audits/{audit['id']}/report").data.decode()
    assert "Most confident" in report and "Least confident" in report
    assert report.count("data:image/png;base64,") == 12  # six of each end


def test_a_bad_image_in_the_zip_is_a_bad_cell_of_its_row(client, cnn):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    data = image_zip(cnn.images[:4], cnn.labels[:4])
    broken = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(broken, "w") as target:
        for item in source.infolist():
            target.writestr(item, b"not a png" if item.filename == "img/1.png" else source.read(item))
    response = submit(client, broken.getvalue(), {"model": "digits", "label": "digit"})
    assert response.status_code == 422 and response.json["code"] == "invalid_image"
    assert response.json["field"] == "dataset[1].image"


def _hostile(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("members", "status", "code"),
    [
        ({"labels.csv": b"file,digit\n../evil.png,1\n", "../evil.png": b"x"}, 422, "unsafe_path"),
        ({"labels.csv": b"file,digit\n/etc/passwd,1\n", "/etc/passwd": b"x"}, 422, "unsafe_path"),
        ({"labels.csv": b"file,digit\na.png,1\n", "C:\\a.png": b"x"}, 422, "unsafe_path"),
        ({"img.png": b"x"}, 422, "missing_field"),
        ({"labels.csv": b"name,digit\na.png,1\n", "a.png": b"x"}, 422, "missing_field"),
        ({"labels.csv": b"file,digit\nbomb.png,1\n", "bomb.png": b"\0" * 3_000_000}, 413, "zip_too_large"),
        ({"labels.csv": b"file\n", **{f"{i}.png": b"x" for i in range(30)}}, 422, "too_many_files"),
    ],
)
def test_hostile_zips_are_refused_with_codes(settings, redis_conn, api_key, cnn, members, status, code):
    from service.app import create_app

    application = create_app(settings.replace(max_audit_zip_bytes=1_000_000, max_audit_zip_files=20))
    application.testing = True
    application.test_client_class = ValidatingClient
    client = authorize(application.test_client(), api_key)
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    response = submit(client, _hostile(members), {"model": "digits", "label": "digit"})
    assert response.status_code == status and response.json["code"] == code, response.json


@pytest.mark.parametrize("option", [{"variants": ["int8_static"]}, {"recourse": True}])
def test_a_compression_study_or_recourse_of_an_image_audit_is_refused(client, cnn, option):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    data = image_zip(cnn.images[:4], cnn.labels[:4])
    response = submit(client, data, {"model": "digits", "label": "digit", **option})
    assert response.status_code == 422 and response.json["field"] == next(iter(option)), response.json


def test_a_corrupt_zip_is_422(client, cnn):
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    response = submit(client, b"PK\x03\x04" + b"\0" * 64, {"model": "digits"})
    assert response.status_code == 422 and response.json["code"] == "invalid_zip"


def test_sdk_and_cli_audit_an_image_zip_and_a_text_file(live_url, tmp_path, cnn, capsys):
    pytest.importorskip("captum")
    api = Client(live_url)
    api.register(cnn.onnx_bytes, {**DIGITS_CARD, "name": "sdk-digits"})
    done = api.audit("sdk-digits", image_zip(cnn.images[:6], cnn.labels[:6]), method="saliency", label="digit")
    assert done["status"] == "succeeded" and done["summary"]["input_kind"] == "image"
    model = deep_models.tfidf_classifier()
    api.register(model.onnx_bytes, {**TEXT_CARD, "name": "cli-reviews"})
    texts, labels = deep_models.sentences(6, seed=9)
    dataset = tmp_path / "texts.jsonl"
    dataset.write_bytes(jsonl([{"text": t, "y": int(y)} for t, y in zip(texts, labels, strict=True)]))
    report = tmp_path / "report.html"
    args = ["--url", live_url, "audit", "cli-reviews", str(dataset), "--out", str(report), "--label", "y"]
    assert main([*args, "--method", "occlusion", "--rows", str(tmp_path / "rows.jsonl")]) == 0
    assert "Word importance per predicted class" in report.read_text()
    assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 6


def _lying(declared: int) -> bytes:
    """A zip whose directory says its image holds ``declared`` bytes while it inflates to 2 MB."""
    data = _hostile({"labels.csv": b"file,digit\nbomb.png,1\n", "bomb.png": b"\0" * 2_000_000})
    central = data.rindex(b"PK\x01\x02")  # the last member's central-directory entry (bomb.png)
    patched = bytearray(data)
    patched[central + 24 : central + 28] = declared.to_bytes(4, "little")
    return bytes(patched)


def test_a_member_inflating_past_its_declared_size_is_stopped(client, cnn):
    # zipfile inflates no more than the declared size, then finds the CRC wrong: the lie costs 1000 bytes.
    assert register(client, cnn.onnx_bytes, DIGITS_CARD).status_code == 201
    response = submit(client, _lying(1000), {"model": "digits", "label": "digit"})
    assert response.status_code == 422 and response.json["code"] == "invalid_zip", response.json
    assert "CRC" in response.json["detail"]


def test_json_lines_of_base64_images_audit_like_a_zip(live_client, cnn):
    pytest.importorskip("captum")
    assert register(live_client, cnn.onnx_bytes, {**DIGITS_CARD, "name": "digits-jsonl"}).status_code == 201
    records = [{"image": encode_png(cnn.images[i]), "digit": int(cnn.labels[i])} for i in range(4)]
    accepted = submit(live_client, jsonl(records), {"model": "digits-jsonl", "label": "digit", "method": "saliency"})
    assert accepted.status_code == 202, accepted.json
    audit = poll(live_client, accepted.headers["Location"])
    assert audit["status"] == "succeeded" and audit["summary"]["rows"] == 4
