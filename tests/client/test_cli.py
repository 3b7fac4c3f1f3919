"""The SDK and the `onnxplain` CLI against a running server with real workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main
from client.sdk import ApiError, Client

DEMO = Path(__file__).resolve().parents[2] / "demo"


def test_sdk_register_predict_explain(live_url):
    """The SDK registers the demo model, predicts and explains (waiting for the job)."""
    api = Client(live_url)
    card = json.loads((DEMO / "card.json").read_text())
    card["name"] = "sdk-credit"
    model = api.register(DEMO / "credit.onnx", card, background=DEMO / "background.csv")
    assert model["name"] == "sdk-credit"
    row = json.loads((DEMO / "example.json").read_text())
    prediction = api.predict("sdk-credit", [row])["predictions"][0]
    assert prediction["label"] in ("denied", "approved")
    result = api.explain("sdk-credit", [row], method="kernel_shap", parameters={"nsamples": 256}, wait=0)
    target = result["explanations"][0]["targets"][0]
    assert [a["feature"] for a in target["attributions"]] == card["features"]
    assert abs(target["quality"]["additivity_residual"]) < 1e-6
    assert any(m["name"] == "sdk-credit" for m in api.models())
    with pytest.raises(ApiError) as error:
        api.predict("sdk-credit", [[1, 2]])
    assert error.value.status == 422 and error.value.code == "wrong_row_length"


def test_cli_register_predict_explain(live_url, capsys, tmp_path):
    """`onnxplain register|predict|explain|models` work end to end and print JSON."""
    card = json.loads((DEMO / "card.json").read_text())
    assert (
        main(
            [
                "--url",
                live_url,
                "register",
                str(DEMO / "credit.onnx"),
                "--card",
                str(DEMO / "card.json"),
                "--background",
                str(DEMO / "background.csv"),
                "--name",
                "cli-credit",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["name"] == "cli-credit"
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([json.loads((DEMO / "example.json").read_text())]))
    assert main(["--url", live_url, "predict", "cli-credit", str(rows)]) == 0
    assert "scores" in json.loads(capsys.readouterr().out)["predictions"][0]
    assert (
        main(
            [
                "--url",
                live_url,
                "explain",
                "cli-credit",
                str(rows),
                "--method",
                "kernel_shap",
                "--param",
                "nsamples=128",
                "--param",
                "seed=3",
                "--target",
                "approved",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["parameters"]["seed"] == 3 and result["parameters"]["nsamples"] == 128
    assert result["explanations"][0]["targets"][0]["target"] == "approved"
    assert [a["feature"] for a in result["explanations"][0]["targets"][0]["attributions"]] == card["features"]
    assert main(["--url", live_url, "predict", "cli-credit", "[[1, 2]]"]) == 2
    assert "wrong_row_length" in capsys.readouterr().err
