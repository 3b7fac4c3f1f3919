"""The SDK and the `onnxplain` CLI against a running server with real workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main
from onnxplain_client import ApiError, Client

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
                "--json",
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
    assert main(["--url", live_url, "predict", "cli-credit", str(rows), "--json"]) == 0
    assert "scores" in json.loads(capsys.readouterr().out)["predictions"][0]
    assert (
        main(
            [
                "--url",
                live_url,
                "--json",
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


def test_cli_keys_add_list_revoke(live_settings, live_client, monkeypatch, capsys):
    """`onnxplain keys add|list|revoke` write the server's keys file; the server honours them without a restart."""
    monkeypatch.setenv("ONNXPLAIN_KEYS_FILE", str(live_settings.keys_file))
    monkeypatch.setenv("ONNXPLAIN_KEYS_SECRET", live_settings.keys_secret)
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "client.cli", "keys", *argv], cwd=root, capture_output=True, text=True, check=False
        )

    added = cli("add", "--tenant", "cli-tenant", "--scopes", "read", "--json")
    assert added.returncode == 0, added.stderr
    created = json.loads(added.stdout)
    headers = {"Authorization": f"Bearer {created['key']}"}
    anonymous = live_client.application.test_client()
    assert anonymous.get("/v1/models", headers=headers).status_code == 200
    assert anonymous.post("/v1/models/x:predict", headers=headers, json={}).status_code == 403
    listed = json.loads(cli("list", "--json").stdout)
    assert {"id": created["id"], "tenant": "cli-tenant", "scopes": ["read"]}.items() <= next(
        k for k in listed if k["id"] == created["id"]
    ).items()
    assert all("hash" not in k and "key" not in k for k in listed)
    assert cli("revoke", created["id"]).returncode == 0
    assert anonymous.get("/v1/models", headers=headers).status_code == 401
    assert cli("revoke", created["id"]).returncode == 2
    assert cli("add", "--tenant", "Bad Tenant").returncode == 2


def test_sdk_sends_its_key_and_reports_401(live_url, live_key):
    """An explicit api_key is sent as a bearer token; a wrong one raises ApiError 401 with its code."""
    assert Client(live_url, api_key=live_key).models() is not None
    with pytest.raises(ApiError) as error:
        Client(live_url, api_key="onx_000000000000_" + "x" * 43).models()
    assert error.value.status == 401 and error.value.code == "invalid_key"


def test_sdk_builds_a_pruned_variant_and_serves_it(live_url, live_key):
    """build_variant sends the sparsity, waits for the job and returns the gated state; a bad sparsity is 422."""
    import numpy as np
    import pandas as pd

    from tests.engine.variants import quantize_models as models

    model, X = models.pipeline()
    features = [f"x{i}" for i in range(X.shape[1])]
    api = Client(live_url, api_key=live_key)
    card = {"name": "sdk-pruned", "task": "classification", "features": features, "class_names": ["no", "yes"]}
    background = pd.DataFrame(X[:300], columns=features).to_csv(index=False).encode()
    api.register(model, card, background=background)
    state = api.build_variant("sdk-pruned", "prune_structured", sparsity=0.25)
    assert state["kind"] == "prune_structured" and state["state"] in ("ready", "rejected")
    assert state["report"]["pruning"]["layers"][0]["removed"] == 8
    listed = {v["kind"]: v for v in api.model("sdk-pruned")["variants"]}
    assert listed["prune_structured"]["state"] == state["state"]
    if state["state"] == "ready":
        served = api.predict("sdk-pruned", np.asarray(X[300:310]).tolist(), variant="prune_structured")
        assert served["model"]["variant"] == "prune_structured"
    with pytest.raises(ApiError) as error:
        api.build_variant("sdk-pruned", "prune_magnitude", sparsity=1.0)
    assert error.value.status == 422 and error.value.field == "sparsity"


def test_sdk_and_cli_clear_a_quarantine(live_url, live_settings, capsys):
    """A quarantined version answers 409 model_quarantined to the SDK; `clear_quarantine` and `onnxplain
    unquarantine` let it serve again (the crash that quarantines is tests/worker/test_worker_loss.py's)."""
    from engine.models import quarantine
    from engine.models.store import ModelRegistry

    api = Client(live_url)
    card = json.loads((DEMO / "card.json").read_text())
    card["name"] = "quarantined-credit"
    api.register(DEMO / "credit.onnx", card, background=DEMO / "background.csv")
    row = json.loads((DEMO / "example.json").read_text())
    directory = ModelRegistry(live_settings).get("quarantined-credit").path
    record = quarantine.Quarantine(code="worker_lost", job="explain-0", since="2026-01-01T00:00:00Z")
    for clear in (
        lambda: api.clear_quarantine("quarantined-credit", 1),
        lambda: main(["--url", live_url, "--json", "unquarantine", "quarantined-credit"]),
    ):
        assert quarantine.place(directory, record)
        assert api.model("quarantined-credit")["quarantine"]["code"] == "worker_lost"
        with pytest.raises(ApiError) as refused:
            api.predict("quarantined-credit", [row])
        assert refused.value.status == 409 and refused.value.code == "model_quarantined"
        capsys.readouterr()
        answer = clear()
        cleared = answer if isinstance(answer, dict) else json.loads(capsys.readouterr().out)
        assert cleared["cleared"] == [{"version": 1, **record.to_dict()}]
        assert api.predict("quarantined-credit", [row])["predictions"]
