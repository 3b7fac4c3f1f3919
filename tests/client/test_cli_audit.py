"""`onnxplain audit` and the SDK's audit methods against a running server with real workers."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from client.cli import main
from engine.settings import Settings
from onnxplain_client import ApiError, Client
from tests import builders

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def live_settings(live_settings: Settings) -> Settings:
    """The shared live settings, with this module's chunk size."""
    return live_settings.replace(audit_chunk_rows=200)


def dataset(built: builders.BuiltModel, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(built.X.mean(0), built.X.std(0), (n, 4)), columns=built.card["features"])
    return frame.assign(sex=rng.choice(["F", "M"], n), y=rng.choice(["approved", "denied"], n))


def test_cli_audit_writes_the_report_and_rows(live_url, binary_model, tmp_path, capsys):
    """`onnxplain audit MODEL data.csv --label --sensitive --out --rows` submits, follows, downloads."""
    api = Client(live_url)
    api.register(
        binary_model.onnx_bytes, {**binary_model.card, "name": "cli-audit"}, background=binary_model.background_csv()
    )
    data = tmp_path / "data.csv"
    dataset(binary_model, 600).to_csv(data, index=False)
    report, rows = tmp_path / "report.html", tmp_path / "rows.csv"
    argv = ["--url", live_url, "--json", "audit", "cli-audit", str(data), "--label", "y", "--sensitive", "sex"]
    argv += ["--out", str(report), "--rows", str(rows), "--method", "exact", "--param", "max_features=8"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["status"] == "succeeded" and printed["rows"] == 600 and printed["failed_rows"] == 0
    assert "600/600 rows" in captured.err
    html = report.read_text()
    assert "<html" in html
    assert 'id="fairness"' in html and "data:image/png;base64," in html
    table = pd.read_csv(rows)
    assert sorted(table["row"]) == list(range(600)) and set(table["sensitive.sex"]) == {"F", "M"}


def test_cli_audit_reports_a_refused_dataset(live_url, binary_model, tmp_path, capsys):
    """A dataset without the label column exits 2 with the API's code and field on stderr."""
    card = {**binary_model.card, "name": "cli-audit-bad"}
    Client(live_url).register(binary_model.onnx_bytes, card, background=binary_model.background_csv())
    data = tmp_path / "data.csv"
    dataset(binary_model, 10).to_csv(data, index=False)
    argv = ["--url", live_url, "audit", "cli-audit-bad", str(data), "--label", "outcome", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    assert "422 unknown_column [label]" in capsys.readouterr().err


def test_sdk_audit_methods(live_url, binary_model):
    """submit_audit with JSON rows, wait_audit with progress, audit_rows/audit_report; a canceled audit raises."""
    api = Client(live_url)
    api.register(
        binary_model.onnx_bytes, {**binary_model.card, "name": "sdk-audit"}, background=binary_model.background_csv()
    )
    frame = dataset(binary_model, 50)
    seen: list[str] = []
    done = api.audit(
        "sdk-audit",
        frame.to_dict(orient="records"),
        label="y",
        sensitive=["sex"],
        method="linear",
        on_progress=lambda a: seen.append(a["status"]),
    )
    assert done["status"] == "succeeded" and seen[-1] == "succeeded"
    parquet = api.audit_rows(done["id"])
    assert isinstance(parquet, bytes) and parquet[:4] == b"PAR1"
    assert b"<html" in api.audit_report(done["id"])
    jsonl = api.audit_rows(done["id"], format="jsonl")
    assert len(jsonl.splitlines()) == 50
    with pytest.raises(ApiError) as refused:
        api.submit_audit("sdk-audit", frame.drop(columns=["age"]).to_dict(orient="records"))
    assert refused.value.status == 422 and refused.value.code == "missing_feature"


def test_progress_without_rich_is_one_line_on_stderr(monkeypatch, capsys):
    """Without rich the progress is a single rewritten line on stderr; stdout stays for the JSON result."""
    import sys

    from client.cli import _Progress

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # makes `from rich.progress import ...` fail
    progress = {
        "rows_done": 250,
        "rows_total": 1000,
        "chunks_done": 1,
        "chunks_total": 4,
        "eta_s": 3.2,
        "fraction": 0.25,
    }
    with _Progress() as shown:
        shown.update({"status": "running", "progress": progress})
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "\rrunning: 250/1000 rows, 1/4 chunks, ETA 3 s (25 %)" in captured.err


def test_cli_and_sdk_run_a_compression_study(live_url, tmp_path, capsys):
    """`onnxplain audit ... --variants int8_static,prune_structured` prints the study and writes rows per variant."""
    built = builders.study_mlp()
    api = Client(live_url)
    api.register(built.onnx_bytes, {**built.card, "name": "cli-study"}, background=built.background_csv(rows=40))
    for kind in ("int8_static", "prune_structured"):
        state = api.build_variant("cli-study", kind, sparsity=0.25 if kind.startswith("prune") else None, wait=True)
        assert state["state"] == "ready", state
    data = tmp_path / "data.csv"
    frame = pd.DataFrame(built.X[400:800], columns=built.card["features"])
    frame.to_csv(data, index=False)
    report, rows = tmp_path / "report.html", tmp_path / "rows.parquet"
    argv = ["--url", live_url, "--json", "audit", "cli-study", str(data), "--method", "exact"]
    argv += ["--variants", "int8_static, prune_structured", "--out", str(report), "--rows", str(rows)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [v["variant"] for v in printed["compression"]] == ["int8_static", "prune_structured"]
    fp32 = pd.read_parquet(rows)
    for line in printed["compression"]:
        table = pd.read_parquet(tmp_path / f"rows.{line['variant']}.parquet")
        assert table["row"].tolist() == fp32["row"].tolist()
        assert line["median_rank_correlation"] == pytest.approx(float(np.median(table["spearman"])))
        assert line["drift_flagged"] == (line["median_rank_correlation"] < 0.9 - 1e-9)
    assert 'id="compression"' in report.read_text()
    audit = api.audit("cli-study", frame.head(20).to_dict(orient="records"), method="exact", variants=["int8"])
    assert [v["variant"] for v in audit["summary"]["compression"]["variants"]] == ["int8_static"]
    own = pd.read_parquet(io.BytesIO(api.audit_rows(audit["id"], variant="int8_static")))  # type: ignore[arg-type]
    assert len(own) == 20 and {"spearman", "top_k_overlap", "fp32_prediction"} <= set(own.columns)
    with pytest.raises(ApiError) as refused:
        api.submit_audit("cli-study", frame.head(5).to_dict(orient="records"), variants=["fp16"])
    assert (refused.value.status, refused.value.code, refused.value.field) == (404, "variant_not_found", "variants[0]")
