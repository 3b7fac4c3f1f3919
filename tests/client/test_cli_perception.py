"""The SDK and CLI with the demo image and text models: --image, --text and --heatmaps."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from client.cli import main
from onnxplain_client import Client

DEMO = Path(__file__).resolve().parents[2] / "demo"


def test_cli_explains_an_image_file_and_writes_its_heatmap(live_url, capsys, tmp_path):
    card = json.loads((DEMO / "digits_card.json").read_text())
    card["name"] = "cli-digits"
    Client(live_url).register(DEMO / "digits.onnx", card, background=DEMO / "digits_background.csv")
    args = [
        "--url",
        live_url,
        "--json",
        "explain",
        "cli-digits",
        "--image",
        str(DEMO / "digit.png"),
        "--method",
        "occlusion",
    ]
    assert main([*args, "--param", "patch=2", "--heatmaps", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    label = result["explanations"][0]["prediction"]["label"]
    assert label == "6"
    with Image.open(tmp_path / f"0-{label}.png") as heatmap:
        assert heatmap.format == "PNG" and heatmap.size == (128, 128)


def test_sdk_and_cli_explain_texts(live_url, capsys):
    api = Client(live_url)
    card = json.loads((DEMO / "tickets_card.json").read_text())
    card["name"] = "cli-tickets"
    api.register(DEMO / "tickets.onnx", card)
    text = "my password does not work and the login page is locked"
    assert api.predict("cli-tickets", [text])["predictions"][0]["label"] == "account"
    assert main(["--url", live_url, "explain", "cli-tickets", "--text", text, "--method", "occlusion", "--json"]) == 0
    target = json.loads(capsys.readouterr().out)["explanations"][0]["targets"][0]
    top = max(target["attributions"], key=lambda a: a["attribution"])
    assert top["token"] in ("password", "login", "locked")


def test_cli_registers_a_token_id_model_with_its_tokenizer_and_the_sdk_explains_it(live_url, capsys, tmp_path):
    import pytest

    pytest.importorskip("captum")
    from tests import deep_models
    from tests.service.test_token_models import CARD, TEXT

    model = deep_models.token_classifier(tmp_path)
    (tmp_path / "model.onnx").write_bytes(model.onnx_bytes)
    (tmp_path / "card.json").write_text(json.dumps({**CARD, "name": "cli-token-ids"}))
    args = ["--url", live_url, "register", str(tmp_path / "model.onnx"), "--card", str(tmp_path / "card.json")]
    assert main([*args, "--tokenizer", str(model.tokenizer_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["card"]["text"]["tokenizer"] == "tokenizer.json"
    result = Client(live_url).explain("cli-token-ids", [TEXT], method="integrated_gradients", targets=["negative"])
    target = result["explanations"][0]["targets"][0]
    assert max(target["attributions"], key=lambda a: a["attribution"])["token"] == "awful"
