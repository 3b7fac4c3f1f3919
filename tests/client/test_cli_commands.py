"""Every use case of the `onnxplain` CLI against a running server with real workers (auth on): models
push|list|show|rm, predict, explain (waiting with progress, or --no-wait), jobs show|wait|cancel, variants
build|list|show, audit and audits show|download|cancel; tables by default, --json for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli import main
from tests import builders


@pytest.fixture(scope="module")
def mlp() -> builders.BuiltModel:
    return builders.small_mlp("cli-mlp")


@pytest.fixture
def files(tmp_path: Path, mlp: builders.BuiltModel) -> dict[str, Path]:
    paths = {"model": tmp_path / "m.onnx", "card": tmp_path / "card.json", "background": tmp_path / "b.csv"}
    paths["model"].write_bytes(mlp.onnx_bytes)
    paths["card"].write_text(json.dumps(mlp.card))
    paths["background"].write_bytes(mlp.background_csv())
    paths["rows"] = tmp_path / "rows.json"
    paths["rows"].write_text(json.dumps(mlp.X[:2].tolist()))
    records = [dict(zip(mlp.card["features"], r, strict=True)) for r in mlp.X[:20].tolist()]
    paths["dataset"] = tmp_path / "data.jsonl"
    paths["dataset"].write_text("\n".join(json.dumps(r) for r in records))
    return paths


def run(capsys: pytest.CaptureFixture[str], url: str, *argv: str, code: int = 0) -> str:
    assert main(["--url", url, *argv]) == code, capsys.readouterr()
    return capsys.readouterr().out


def test_models_predict_explain_and_jobs(live_url, files, capsys):
    """models push|list|show|rm; predict and explain as tables and JSON; a job shown, waited for, canceled."""
    pushed = run(capsys, live_url, "models", "push", str(files["model"]), "--card", str(files["card"]),
                 "--background", str(files["background"]), "--json")  # fmt: skip
    assert json.loads(pushed)["version"] == 1
    listed = run(capsys, live_url, "models", "list")
    assert "cli-mlp" in listed and "classification" in listed and "{" not in listed  # a table, not JSON
    assert any(m["name"] == "cli-mlp" for m in json.loads(run(capsys, live_url, "--json", "models")))
    shown = run(capsys, live_url, "models", "show", "cli-mlp")
    assert "cli-mlp" in shown and "features" in shown
    predicted = run(capsys, live_url, "predict", "cli-mlp", str(files["rows"]))
    assert "cli-mlp v1" in predicted and ("no" in predicted or "yes" in predicted)
    explained = run(capsys, live_url, "explain", "cli-mlp", str(files["rows"]), "--method", "exact")
    assert "row 1, target" in explained and "attribution" in explained
    queued = json.loads(run(capsys, live_url, "explain", "cli-mlp", str(files["rows"]), "--method", "kernel_shap",
                            "--no-wait", "--idempotency-key", "cli-1", "--json"))  # fmt: skip
    again = json.loads(run(capsys, live_url, "explain", "cli-mlp", str(files["rows"]), "--method", "kernel_shap",
                           "--no-wait", "--idempotency-key", "cli-1", "--json"))  # fmt: skip
    # The same key answers with the first job: still queued (the job), or already done (its result, 200).
    assert again["id"] == queued["id"] if "id" in again else again["explanations"]
    waited = json.loads(run(capsys, live_url, "jobs", "wait", queued["id"], "--json"))
    assert waited["status"] == "succeeded" and waited["result"]["explanations"]
    shown_job = run(capsys, live_url, "jobs", "show", queued["id"])
    assert "succeeded" in shown_job and queued["id"] in shown_job
    assert (
        "job_not_cancelable" in (main(["--url", live_url, "jobs", "cancel", queued["id"]]), capsys.readouterr().err)[1]
    )
    refused = main(["--url", live_url, "explain", "cli-mlp", str(files["rows"]), "--callback-url", "http://10.0.0.1/"])
    assert refused == 2 and "callback_url_not_allowed [callback_url]" in capsys.readouterr().err
    removed = run(capsys, live_url, "models", "rm", "cli-mlp")
    assert "deleted cli-mlp version(s) 1" in removed
    assert main(["--url", live_url, "models", "show", "cli-mlp"]) == 2
    assert "404 model_not_found" in capsys.readouterr().err


def test_variants_build_list_show(live_url, files, capsys):
    """variants build waits with a progress line; list and show read the model's variants."""
    run(capsys, live_url, "models", "push", str(files["model"]), "--card", str(files["card"]),
        "--background", str(files["background"]), "--name", "cli-mlp-v")  # fmt: skip
    built = json.loads(run(capsys, live_url, "variants", "build", "cli-mlp-v", "fp16", "--json"))
    assert built["kind"] == "fp16" and built["state"] in ("ready", "rejected")
    listed = run(capsys, live_url, "variants", "list", "cli-mlp-v")
    assert "fp16" in listed and built["state"] in listed
    shown = json.loads(run(capsys, live_url, "variants", "show", "cli-mlp-v", "fp16", "--json"))
    assert shown["kind"] == "fp16" and "report" in shown
    assert main(["--url", live_url, "variants", "show", "cli-mlp-v", "int8_static"]) == 2
    queued = json.loads(run(capsys, live_url, "variants", "build", "cli-mlp-v", "int8_dynamic", "--no-wait", "--json"))
    assert queued["job"]["id"].startswith("variant-")


def test_audit_and_audits_commands(live_url, files, capsys, tmp_path):
    """audit (table summary), audits show|download; a finished audit cannot be canceled."""
    run(capsys, live_url, "models", "push", str(files["model"]), "--card", str(files["card"]),
        "--background", str(files["background"]), "--name", "cli-mlp-a", "--visibility", "shared")  # fmt: skip
    report = tmp_path / "report.html"
    summary = run(capsys, live_url, "audit", "cli-mlp-a", str(files["dataset"]), "--out", str(report),
                  "--method", "exact", "--idempotency-key", "cli-audit-1")  # fmt: skip
    assert "succeeded" in summary and "top features" in summary and report.read_text().startswith("<!")
    audit = json.loads(run(capsys, live_url, "--json", "audit", "cli-mlp-a", str(files["dataset"]),
                           "--out", str(report), "--method", "exact", "--idempotency-key", "cli-audit-1"))  # fmt: skip
    shown = json.loads(run(capsys, live_url, "audits", "show", audit["id"], "--json"))
    assert shown["status"] == "succeeded" and shown["summary"]["rows"] == 20
    assert "succeeded" in run(capsys, live_url, "audits", "show", audit["id"])
    rows = tmp_path / "rows.csv"
    run(capsys, live_url, "audits", "download", audit["id"], "--rows", str(rows), "--report", str(tmp_path / "r.html"))
    assert len(rows.read_text().splitlines()) == 21 and (tmp_path / "r.html").exists()
    assert main(["--url", live_url, "audits", "cancel", audit["id"]]) == 2
    assert "audit_not_cancelable" in capsys.readouterr().err
