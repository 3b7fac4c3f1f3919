"""Every file of the hostile model corpus (tests/corpus/generate.py) is refused with its documented code."""

from __future__ import annotations

import io
import json
import re

import pytest

from tests.corpus.generate import CASES, generate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    directory = tmp_path_factory.mktemp("corpus")
    return directory, generate(directory)


@pytest.fixture
def settings(settings):
    """The suite's settings, with a short probe limit: the boundary spin model runs until it."""
    return settings.replace(probe_timeout_s=3.0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_hostile_model_is_refused_with_its_code(name, corpus, client, settings):
    directory, manifest = corpus
    entry = manifest[name]
    card = {"name": f"corpus-{name.replace('_', '-')}", "task": "regression", "features": entry["features"]}
    data = {
        "model": (io.BytesIO((directory / str(entry["file"])).read_bytes()), "m.onnx"),
        "card": json.dumps(card),
    }
    response = client.post("/v1/models", data=data, content_type="multipart/form-data")
    assert response.status_code == 422, (name, response.json)
    assert response.json["code"] == entry["code"], (name, response.json)
    # The detail names what is wrong, never where the server or onnxruntime's sources keep files.
    assert not re.search(r"(?:/[\w.-]+){2,}", response.json["detail"]), response.json["detail"]
    assert client.get(f"/v1/models/{card['name']}").status_code == 404  # nothing was stored
