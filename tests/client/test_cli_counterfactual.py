"""``onnxplain counterfactual`` and ``surrogate``, and the SDK's methods, against a server with real workers."""

from __future__ import annotations

import json
from pathlib import Path

from client.cli import main
from onnxplain_client import Client

DEMO = Path(__file__).resolve().parents[2] / "demo"


def _register(api: Client, name: str) -> dict:
    card = json.loads((DEMO / "card.json").read_text())
    card["name"] = name
    return api.register(DEMO / "credit.onnx", card, background=DEMO / "background.csv")


def test_sdk_counterfactual_and_surrogate(live_url):
    api = Client(live_url)
    _register(api, "sdk-cf")
    row = json.loads((DEMO / "example.json").read_text())
    label = api.predict("sdk-cf", [row])["predictions"][0]["label"]
    other = "approved" if label == "denied" else "denied"
    result = api.counterfactual(
        "sdk-cf", [row], desired=other, constraints={"immutable": ["age"]}, parameters={"samples": 200}, wait=0
    )
    answer = result["rows"][0]
    assert answer["desired"] == other
    assert answer["status"] in ("found", "not_found")
    for cf in answer["counterfactuals"]:
        assert cf["quality"]["valid"] and cf["instance"]["age"] == row["age"]
        assert api.predict("sdk-cf", [cf["instance"]])["predictions"][0]["label"] == other
    surrogate = api.surrogate("sdk-cf", max_depth=2)
    assert surrogate["depth"] <= 2 and 0 <= surrogate["fidelity"]["held_out"] <= 1


def test_cli_counterfactual_with_immutable_features(live_url, capsys, tmp_path):
    _register(Client(live_url), "cli-cf")
    capsys.readouterr()
    row = json.loads((DEMO / "example.json").read_text())
    rows = tmp_path / "row.json"
    rows.write_text(json.dumps([row]))
    label = Client(live_url).predict("cli-cf", [row])["predictions"][0]["label"]
    other = "approved" if label == "denied" else "denied"
    args = ["--url", live_url, "counterfactual", "cli-cf", str(rows), "--desired", other]
    args += ["--immutable", "age,late_payments", "--param", "samples=200"]
    assert main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["constraints"]["immutable"] == ["age", "late_payments"]
    for cf in result["rows"][0]["counterfactuals"]:
        assert {c["feature"] for c in cf["changes"]}.isdisjoint({"age", "late_payments"})
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"row 0: {label} → {other}")
    if result["rows"][0]["counterfactuals"]:
        assert "cost" in text and "→" in text.splitlines()[1]
    assert main(["--url", live_url, "surrogate", "cli-cf"]) == 0
    assert capsys.readouterr().out.startswith("fidelity (accuracy")


def test_cli_audit_with_recourse_writes_the_recourse_section(live_url, tmp_path, capsys):
    api = Client(live_url)
    _register(api, "cli-recourse")
    data = tmp_path / "applicants.csv"
    data.write_text("".join((DEMO / "applicants.csv").read_text().splitlines(keepends=True)[:61]))
    report = tmp_path / "report.html"
    argv = ["--url", live_url, "audit", "cli-recourse", str(data), "--sensitive", "sex", "--recourse"]
    assert main([*argv, "--out", str(report)]) == 0
    capsys.readouterr()
    html = report.read_text()
    assert 'id="recourse"' in html and "Global surrogate" in html
    audit = api.get_audit(api.audit("cli-recourse", data, sensitive=["sex"], recourse=True)["id"])
    recourse = audit["summary"]["recourse"]
    assert recourse["desired"] == "approved" and set(recourse["groups"]["sex"]["groups"]) <= {"F", "M"}
