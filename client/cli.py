"""The ``onnxplain`` command line: run the service, and use it over HTTP.

Server commands (``up``, ``serve``, ``worker``) start processes; the others
talk to a running server (``--url``, or ``ONNXPLAIN_URL``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from client import launcher, output
from onnxplain_client import ApiError, Client

DEMO = Path(__file__).resolve().parent.parent / "demo"


def _rows(source: str | None) -> list[Any]:
    if source is None:
        return []
    text = sys.stdin.read() if source == "-" else Path(source).read_text() if Path(source).exists() else source
    data = json.loads(text)
    rows: list[Any] = data["instances"] if isinstance(data, dict) else data
    return rows


def _inputs(args: argparse.Namespace) -> list[Any]:
    """Rows from the positional JSON, then each ``--image`` file (as base64) and each ``--text``."""
    inputs = _rows(args.rows)
    inputs += [base64.b64encode(Path(path).read_bytes()).decode("ascii") for path in args.image]
    inputs += list(args.text)
    if not inputs:
        raise SystemExit("give rows (JSON), --image FILE or --text STRING")
    return inputs


def _save_heatmaps(result: dict[str, Any], directory: str) -> None:
    """Write each image target's heatmap as ``<input>-<target>.png`` under ``directory``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for i, explanation in enumerate(result.get("explanations", [])):
        for target in explanation["targets"]:
            if "heatmap_png" in target:
                path = out / f"{i}-{target['target']}.png"
                path.write_bytes(base64.b64decode(target["heatmap_png"]))
                print(f"wrote {path}", file=sys.stderr)


def _params(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/livez", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the API did not come up at {url}")


def _dev_key(env: dict[str, str]) -> tuple[str, str] | None:
    """Create a key with every scope for this ``up`` session; return it and its id (``None`` with auth off)."""
    if env.get("ONNXPLAIN_AUTH", "on") == "off":
        return None
    done = launcher.run_keys(
        ["add", "--tenant", "dev", "--scopes", "admin,explain,read", "--name", "onnxplain up", "--json"],
        env,
        capture=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"could not create a development key: {done.stderr.strip()}")
    created = json.loads(done.stdout)
    return str(created["key"]), str(created["id"])


def _self_command() -> str:
    """How this CLI was started, so a printed command line works as it is (``.venv/bin/onnxplain``)."""
    script = Path(sys.argv[0])
    if script.name == "onnxplain":
        return str(script)
    return f"{sys.executable} -m client.cli"


def cmd_up(args: argparse.Namespace) -> int:
    """Start Redis (embedded unless configured), workers and the API; register the demo model.

    Auth stays on: a key with every scope is created for the session, printed in the curl lines, and revoked
    when ``up`` stops.
    """
    env = dict(os.environ)
    # The API and the workers must agree on the stores whatever their working directories.
    env.setdefault("ONNXPLAIN_MODEL_DIR", str(Path("var/models").resolve()))
    env.setdefault("ONNXPLAIN_KEYS_FILE", str(Path("var/keys.json").resolve()))
    env.setdefault("ONNXPLAIN_AUDIT_DIR", str(Path("var/audits").resolve()))
    # Webhooks are signed with a secret of this session unless the operator gave one (as the dev key is made).
    env.setdefault("ONNXPLAIN_WEBHOOK_SECRET", secrets.token_urlsafe(32))
    redis = None
    if not env.get("ONNXPLAIN_REDIS_URL"):
        # Loopback only, and a fresh password each start: another local user can reach 127.0.0.1 too, and
        # whoever writes to the queues chooses what the workers run. The URL (with the password) goes to the
        # API and the workers in their environment, never to the terminal.
        redis = launcher.start_redis(persist=True, password=secrets.token_urlsafe(32))
        env["ONNXPLAIN_REDIS_URL"] = redis.url
        print(f"started an embedded Redis on {redis.address}")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    dev = _dev_key(env)
    procs = [launcher.start_worker(env) for _ in range(args.workers)]
    procs.append(launcher.start_api(env, host=args.host, port=args.port, workers=args.api_workers))
    url = f"http://{args.host}:{args.port}"
    auth = f"-H 'Authorization: Bearer {dev[0]}' " if dev else ""
    try:
        _wait_ready(url)
        api = Client(url, api_key=dev[0] if dev else "")
        card = json.loads((DEMO / "card.json").read_text())
        if not any(m["name"] == card["name"] for m in api.models()):
            api.register(DEMO / "credit.onnx", card, background=DEMO / "background.csv")
        _register_demos(api)
        row = json.loads((DEMO / "example.json").read_text())
        print(f"\nonnxplain is running at {url} with the demo model '{card['name']}'.")
        if dev:
            print(f"A development key (tenant 'dev', every scope; revoked when this stops): {dev[0]}")
        else:
            print("AUTHENTICATION IS OFF (ONNXPLAIN_AUTH=off): anyone who can reach the port can use it.")
        print(f"Webhooks (callback_url) are signed with ONNXPLAIN_WEBHOOK_SECRET={env['ONNXPLAIN_WEBHOOK_SECRET']}")
        print("Try:\n")
        print(f"  curl -s {url}/v1/models/{card['name']}:predict {auth}-H 'Content-Type: application/json' \\")
        print(f"    -d '{json.dumps({'instances': [row]})}'\n")
        print(f"  curl -s {url}/v1/models/{card['name']}:explain {auth}-H 'Content-Type: application/json' \\")
        print(f"    -d '{json.dumps({'instances': [row], 'method': 'kernel_shap', 'wait': 60})}'\n")
        print("  and audit 2,000 applicants (report and per-row file written here):\n")
        key_option = f" --api-key {dev[0]}" if dev else ""
        print(f"  {_self_command()} --url {url}{key_option} audit {card['name']} {DEMO / 'applicants.csv'} \\")
        print("    --label outcome --sensitive sex --sensitive age_band --out report.html --rows rows.parquet\n")
        print("  explain a handwritten digit (8×8 PNG) and write its heatmap, and route a support ticket:\n")
        print(f"  curl -s {url}/v1/models/digits:explain {auth}-H 'Content-Type: application/json' \\")
        print(f"    -d @{DEMO / 'digits_example.json'}\n")
        image = DEMO / "digit.png"
        print(f"  {_self_command()} --url {url}{key_option} explain digits --image {image} --heatmaps heatmaps\n")
        print(f"  curl -s {url}/v1/models/tickets:explain {auth}-H 'Content-Type: application/json' \\")
        print(f"    -d @{DEMO / 'tickets_example.json'}\n")
        print("Press Ctrl-C to stop.", flush=True)
        if args.exit_after_start:
            return 0
        # Blocked only now, so the children started above keep default signals.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        launcher.stop_processes(procs)
        if dev:
            launcher.run_keys(["revoke", dev[1]], env, capture=True)
        if redis is not None:
            redis.stop()


def _register_demos(api: Client) -> None:
    """Register the demo image (digits CNN) and text (ticket router) models unless they are there."""
    known = {m["name"] for m in api.models()}
    if "digits" not in known:
        api.register(
            DEMO / "digits.onnx",
            json.loads((DEMO / "digits_card.json").read_text()),
            background=DEMO / "digits_background.csv",
        )
    if "tickets" not in known:
        api.register(DEMO / "tickets.onnx", json.loads((DEMO / "tickets_card.json").read_text()))


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API under gunicorn in the foreground."""
    return launcher.start_api(dict(os.environ), host=args.host, port=args.port, workers=args.api_workers).wait()


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker in the foreground."""
    return launcher.start_worker(dict(os.environ)).wait()


def cmd_keys(args: argparse.Namespace) -> int:
    """Add, list or revoke API keys in the server's keys file (``ONNXPLAIN_KEYS_FILE``), on this machine."""
    return launcher.run_keys(args.rest).returncode


def _api(args: argparse.Namespace) -> Client:
    return Client(args.url, api_key=args.api_key)


MODEL_COLUMNS = [
    ("name", "name"),
    ("version", "version"),
    ("task", "card.task"),
    ("input", "card.input_kind"),
    ("visibility", "visibility"),
    ("sha256", "sha256"),
]
JOB_FIELDS = [
    ("id", "id"),
    ("kind", "kind"),
    ("status", "status"),
    ("progress", "progress"),
    ("created", "created_at"),
    ("ended", "ended_at"),
    ("error", "error.code"),
]
VARIANT_COLUMNS = [
    ("kind", "kind"),
    ("state", "state"),
    ("top-1 agreement", "report.agreement.top1"),
    ("size ratio", "report.size_bytes.ratio"),
    ("speedup", "report.latency.speedup"),
    ("drift flagged", "report.drift_flagged"),
    ("error", "error.code"),
]
AUDIT_FIELDS = [
    ("id", "id"),
    ("status", "status"),
    ("model", "model.name"),
    ("version", "model.version"),
    ("method", "method"),
    ("rows", "progress.rows_total"),
    ("rows done", "progress.rows_done"),
    ("chunks", "progress.chunks_total"),
    ("failed chunks", "progress.chunks_failed"),
    ("created", "created_at"),
    ("ended", "ended_at"),
    ("error", "error.code"),
]


def _show(args: argparse.Namespace, data: Any, render: Any) -> int:
    """Print ``data`` as JSON with ``--json``, else through ``render``."""
    if args.json:
        _print(data)
    else:
        render(data)
    return 0


def cmd_models_push(args: argparse.Namespace) -> int:
    """Register an ONNX model with its card (and optional background): the next version of its name."""
    card = json.loads(Path(args.card).read_text())
    if args.name:
        card["name"] = args.name
    model = _api(args).register(
        args.model, card, background=args.background, tokenizer=args.tokenizer, visibility=args.visibility
    )
    return _show(args, model, lambda m: output.table([m], MODEL_COLUMNS, title="registered"))


def cmd_models_list(args: argparse.Namespace) -> int:
    """List models (the latest version of each)."""
    models = _api(args).models()
    return _show(args, models, lambda ms: output.table(ms, MODEL_COLUMNS, title=f"{len(ms)} models"))


def cmd_models_show(args: argparse.Namespace) -> int:
    """Describe one model: its card, versions and variants."""
    model = _api(args).model(args.name, args.version)

    def render(m: dict[str, Any]) -> None:
        output.table([m], MODEL_COLUMNS)
        output.fields(m, [("features", "card.features"), ("classes", "card.class_names")])
        if m.get("variants"):
            output.table(m["variants"], VARIANT_COLUMNS, title="variants")

    return _show(args, model, render)


def cmd_models_rm(args: argparse.Namespace) -> int:
    """Delete a model, or one version."""
    deleted = _api(args).delete(args.name, args.version)
    versions = ", ".join(str(v) for v in deleted["deleted_versions"])
    return _show(args, deleted, lambda d: print(f"deleted {d['name']} version(s) {versions}"))


def _render_predictions(answer: dict[str, Any]) -> None:
    rows = [
        {"row": i, "label": p.get("label"), "value": p.get("value"), "scores": p.get("scores")}
        for i, p in enumerate(answer["predictions"])
    ]
    model = answer["model"]
    title = f"{model['name']} v{model['version']} ({model['variant']})"
    output.table(rows, [("row", "row"), ("label", "label"), ("value", "value"), ("scores", "scores")], title=title)


def cmd_unquarantine(args: argparse.Namespace) -> int:
    """Clear a model's quarantine (every version, or ``--version``): an operator's call, scope admin."""
    cleared = _api(args).clear_quarantine(args.name, args.version)
    versions = ", ".join(str(c["version"]) for c in cleared["cleared"]) or "none was quarantined"
    return _show(args, cleared, lambda c: print(f"cleared {c['name']}: {versions}"))


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict rows given as JSON (a file, '-' for stdin, or inline), images or texts."""
    answer = _api(args).predict(args.model, _inputs(args), version=args.version, variant=args.variant)
    return _show(args, answer, _render_predictions)


def _render_explanation(result: dict[str, Any]) -> None:
    for i, explanation in enumerate(result.get("explanations", [])):
        for target in explanation["targets"]:
            attributions = target.get("attributions") or []
            ranked = sorted(attributions, key=lambda a: -abs(float(a["attribution"])))
            base = target.get("base_value")
            title = f"row {i}, target {target['target']}" + (f" (base value {base:.4g})" if base is not None else "")
            if ranked:
                output.table(
                    ranked, [("feature", "feature"), ("value", "value"), ("attribution", "attribution")], title=title
                )
            else:
                print(f"{title}: see --json (image or text attributions)")


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain rows, waiting for the job (a progress line while it runs), unless ``--no-wait``."""
    api = _api(args)
    options: dict[str, Any] = {
        "method": args.method,
        "parameters": _params(args.param) or None,
        "targets": args.target or None,
        "version": args.version,
        "variant": args.variant,
        "callback_url": args.callback_url,
        "idempotency_key": args.idempotency_key,
    }
    answer = api.submit_explain(args.model, _inputs(args), wait=0 if args.no_wait else args.wait, **options)
    if "explanations" not in answer:
        if args.no_wait:
            return _show(args, answer, lambda j: output.fields(j, JOB_FIELDS, title="queued"))
        with _JobProgress(f"explaining ({answer['id']})") as progress:
            answer = api.wait_job(answer["id"], timeout=args.timeout, on_poll=progress.update)["result"]
    if args.heatmaps:
        _save_heatmaps(answer, args.heatmaps)
    return _show(args, answer, _render_explanation)


class _Progress:
    """An audit's progress on stderr: a rich progress bar when rich is installed, else one rewritten line."""

    def __init__(self) -> None:
        try:
            from rich.console import Console
            from rich.progress import Progress
        except ImportError:
            self.bar: Any = None
        else:
            self.bar = Progress(console=Console(stderr=True))  # stdout stays for the JSON result
        self.task: Any = None

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def update(self, audit: dict[str, Any]) -> None:
        """Show one poll of the audit."""
        p = audit["progress"]
        eta = f", ETA {p['eta_s']:.0f} s" if p.get("eta_s") else ""
        chunks = f"{p['chunks_done']}/{p['chunks_total']} chunks"
        text = f"{audit['status']}: {p['rows_done']}/{p['rows_total']} rows, {chunks}{eta}"
        self.show(text, p["rows_done"], p["rows_total"], p["fraction"])

    def show(self, text: str, done: float, total: float, fraction: float) -> None:
        """Draw one state of the bar."""
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(text, total=total)
            self.bar.update(self.task, completed=done, description=text)
        else:
            print(f"\r{text} ({100 * fraction:.0f} %)   ", end="", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        else:
            print(file=sys.stderr)


class _JobProgress(_Progress):
    """A job's progress (its ``progress`` fraction, when it reports one) on stderr."""

    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def update(self, job: dict[str, Any]) -> None:
        """Show one poll of the job."""
        fraction = float(job.get("progress") or 0.0)
        self.show(f"{self.label}: {job['status']}", fraction * 100, 100, fraction)


def cmd_counterfactual(args: argparse.Namespace) -> int:
    """Counterfactuals of rows: what would have to change to reach ``--desired``; waits for the job."""
    constraints: dict[str, Any] = json.loads(Path(args.constraints).read_text()) if args.constraints else {}
    for key, value in (("immutable", args.immutable), ("integer", args.integer)):
        if value:
            names = [n.strip() for n in value.split(",") if n.strip()]
            constraints[key] = sorted({*constraints.get(key, []), *names})
    for key, direction in (("increase_only", args.increase_only), ("decrease_only", args.decrease_only)):
        for name in (n.strip() for n in (direction or "").split(",") if n.strip()):
            constraints.setdefault("directions", {})[name] = key
    desired_range = None
    if args.desired_range:
        low, _, high = args.desired_range.partition(",")
        desired_range = (float(low) if low else None, float(high) if high else None)
    result = _api(args).counterfactual(
        args.model,
        _rows(args.rows),
        desired=args.desired,
        desired_range=desired_range,
        constraints=constraints or None,
        parameters=_params(args.param) or None,
        version=args.version,
        variant=args.variant,
    )
    return _show(args, result, _render_counterfactuals)


def _render_counterfactuals(result: dict[str, Any]) -> None:
    for i, row in enumerate(result["rows"]):
        print(f"row {i}: {row['prediction'].get('label', row['prediction'].get('value'))} → {row['desired']}")
        if row["status"] != "found":
            print(f"  {row['status']}: {row.get('reason', 'the row already has the desired outcome')}")
        for cf in row["counterfactuals"]:
            changes = ", ".join(f"{c['feature']} {c['from']} → {c['to']}" for c in cf["changes"])
            q = cf["quality"]
            print(f"  {changes}  (cost {q['proximity']:.3g}, {q['sparsity']} changed, valid {q['valid']})")


def cmd_surrogate(args: argparse.Namespace) -> int:
    """The model's global surrogate: its fidelity and rules (``--json`` for everything)."""
    result = _api(args).surrogate(args.model, version=args.version, max_depth=args.max_depth)

    def render(answer: dict[str, Any]) -> None:
        fidelity = answer["fidelity"]
        held_out = fidelity["rows"]["held_out"]
        print(f"fidelity ({fidelity['metric']}, {held_out} held-out rows): {fidelity['held_out']:.3f}")
        print(answer["rules"])

    return _show(args, result, render)


def _audit_summary(done: dict[str, Any], report: str | None, rows_file: str | None) -> dict[str, Any]:
    summary = done["summary"]
    study = (summary.get("compression") or {}).get("variants", [])
    return {
        "id": done["id"],
        "status": done["status"],
        "report": report,
        "rows_file": rows_file,
        "rows": summary["rows"],
        "skipped_rows": summary["skipped_rows"],
        "failed_rows": summary["failed_rows"],
        "global_importance": [{g["feature"]: g["mean_abs"]} for g in summary["global_importance"][:5]],
        "fairness_flags": summary["fairness"]["flags"],
        **({"compression": [_study_line(item) for item in study]} if study else {}),
    }


def _study_line(item: dict[str, Any]) -> dict[str, Any]:
    """One variant of a compression study, in brief."""
    return {
        "variant": item["variant"],
        "agreement": item["agreement"],
        "median_rank_correlation": item["rank_correlation"]["median"],
        "top_k_overlap": item["top_k_overlap"]["mean"],
        "drift_flagged": item["drift_flagged"],
        "new_fairness_flags": {c: v["new_flags"] for c, v in item["fairness_change"].items() if v["new_flags"]},
    }


def _render_audit_summary(s: dict[str, Any]) -> None:
    keys = [("id", "id"), ("status", "status"), ("report", "report"), ("rows file", "rows_file"), ("rows", "rows")]
    keys += [("skipped rows", "skipped_rows"), ("failed rows", "failed_rows"), ("fairness flags", "fairness_flags")]
    output.fields(s, keys, title="audit")
    importance = [{"feature": k, "mean |attribution|": v} for g in s["global_importance"] for k, v in g.items()]
    output.table(
        importance, [("feature", "feature"), ("mean |attribution|", "mean |attribution|")], title="top features"
    )


def _download_rows(api: Client, audit_id: str, path: str, variants: Sequence[str] = ()) -> None:
    """The rows to ``path``, and a compression study's variants' rows beside it (rows.csv → rows.int8_static.csv)."""
    target = Path(path)
    fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(target.suffix.lower(), "parquet")
    api.audit_rows(audit_id, format=fmt, out=target)
    for variant in variants:
        out = target.with_name(f"{target.stem}.{variant}{target.suffix}")
        api.audit_rows(audit_id, format=fmt, out=out, variant=variant)


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a dataset: submit it, show the progress, download the report (and the per-row results)."""
    api = _api(args)
    audit = api.submit_audit(
        args.model,
        args.dataset,
        label=args.label,
        sensitive=args.sensitive or None,
        method=args.method,
        parameters=_params(args.param) or None,
        positive=args.positive,
        on_bad_rows=args.on_bad_rows,
        title=args.title,
        version=args.version,
        variant=args.variant,
        recourse=True if args.recourse else None,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None,
        callback_url=args.callback_url,
        idempotency_key=args.idempotency_key,
    )
    print(f"audit {audit['id']}: {audit['dataset']['rows']} rows queued", file=sys.stderr)
    try:
        with _Progress() as progress:
            done = api.wait_audit(audit["id"], timeout=args.timeout, on_progress=progress.update)
    except KeyboardInterrupt:
        api.cancel_audit(audit["id"])
        print(f"audit {audit['id']} canceled", file=sys.stderr)
        return 130
    api.audit_report(done["id"], out=args.out)
    if args.rows:
        study = (done["summary"].get("compression") or {}).get("variants", [])
        _download_rows(api, done["id"], args.rows, [item["variant"] for item in study])
    return _show(args, _audit_summary(done, args.out, args.rows), _render_audit_summary)


def cmd_audits_show(args: argparse.Namespace) -> int:
    """Show an audit's status and progress (its summary once done)."""
    return _show(args, _api(args).get_audit(args.id), lambda a: output.fields(a, AUDIT_FIELDS, title="audit"))


def cmd_audits_cancel(args: argparse.Namespace) -> int:
    """Cancel a queued or running audit."""
    return _show(args, _api(args).cancel_audit(args.id), lambda a: output.fields(a, AUDIT_FIELDS, title="audit"))


def cmd_audits_download(args: argparse.Namespace) -> int:
    """Download a finished audit's report (``--report``) and/or per-row results (``--rows``)."""
    if not args.report and not args.rows:
        raise SystemExit("give --report FILE and/or --rows FILE")
    api = _api(args)
    if args.report:
        api.audit_report(args.id, out=args.report)
    if args.rows:
        _download_rows(api, args.id, args.rows)
    written = {"id": args.id, "report": args.report, "rows_file": args.rows}
    return _show(args, written, lambda w: output.fields(w, [("id", "id"), ("report", "report"), ("rows", "rows_file")]))


def cmd_jobs_show(args: argparse.Namespace) -> int:
    """Show a job: status, progress, and its result (``--json``) or error."""
    return _show(args, _api(args).job(args.id), lambda j: output.fields(j, JOB_FIELDS, title="job"))


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    """Cancel a queued or running job."""
    return _show(args, _api(args).cancel(args.id), lambda j: output.fields(j, JOB_FIELDS, title="job"))


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    """Wait for a job with a progress bar; print it once it succeeded."""
    with _JobProgress(args.id) as progress:
        job = _api(args).wait_job(args.id, timeout=args.timeout, on_poll=progress.update)
    return _show(args, job, lambda j: output.fields(j, JOB_FIELDS, title="job"))


def cmd_job(args: argparse.Namespace) -> int:
    """Show, or cancel, a job (``jobs show|cancel`` in JSON; kept for scripts)."""
    api = _api(args)
    _print(api.cancel(args.id) if args.cancel else api.job(args.id))
    return 0


def cmd_variants_build(args: argparse.Namespace) -> int:
    """Build a quantized or pruned variant (a batch job), with a progress line, unless ``--no-wait``."""
    api = _api(args)
    options = {"sparsity": args.sparsity, "version": args.version, "callback_url": args.callback_url}
    queued = api.submit_variant(args.model, args.kind, idempotency_key=args.idempotency_key, **options)
    if args.no_wait:
        return _show(args, queued, lambda q: output.fields(q["job"], JOB_FIELDS, title=f"building {args.kind}"))
    with _JobProgress(f"building {args.kind}") as progress:
        state = api.wait_job(queued["job"]["id"], timeout=args.timeout, on_poll=progress.update)["result"]
    return _show(args, state, lambda s: output.table([s], VARIANT_COLUMNS, title=f"{args.model} variants"))


def _variants_of(args: argparse.Namespace) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = _api(args).model(args.model, args.version).get("variants", [])
    return found


def cmd_variants_list(args: argparse.Namespace) -> int:
    """List a model version's variants with their state and fidelity."""
    variants = _variants_of(args)
    return _show(args, variants, lambda vs: output.table(vs, VARIANT_COLUMNS, title=f"{args.model} variants"))


def cmd_variants_show(args: argparse.Namespace) -> int:
    """Show one variant's state and its full report (``--json``)."""
    found = [v for v in _variants_of(args) if v["kind"] == args.kind]
    if not found:
        print(f"error: {args.model} has no variant {args.kind}", file=sys.stderr)
        return 2
    return _show(args, found[0], lambda v: output.table([v], VARIANT_COLUMNS))


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every command."""
    parser = argparse.ArgumentParser(prog="onnxplain", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("ONNXPLAIN_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=None, help="API key (default: ONNXPLAIN_API_KEY)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables (for scripts)")
    # Each command takes --json too; SUPPRESS leaves the global value when a command's own is not given.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON (for scripts)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Redis (if needed), workers and the API")
    serve = sub.add_parser("serve", help="run the API under gunicorn")
    for p in (up, serve):
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, default=8000)
        p.add_argument("--api-workers", type=int, default=2)
    up.add_argument("--workers", type=int, default=1, help="worker processes")
    up.add_argument("--exit-after-start", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)
    serve.set_defaults(func=cmd_serve)
    sub.add_parser("worker", help="run one worker").set_defaults(func=cmd_worker)
    keys = sub.add_parser(
        "keys",
        help="manage API keys: add --tenant T --scopes admin,explain,read | list | revoke ID (add --json)",
        add_help=False,
    )
    keys.add_argument("rest", nargs=argparse.REMAINDER)
    keys.set_defaults(func=cmd_keys)

    def push_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", help="the ONNX file")
        p.add_argument("--card", required=True, help="the model card (JSON file)")
        p.add_argument("--background", help="reference rows (CSV or Parquet)")
        p.add_argument("--name", help="register under this name (default: the card's)")
        p.add_argument("--tokenizer", help="tokenizers JSON of a token-id text model (the card's text.tokenizer)")
        p.add_argument("--visibility", choices=["private", "shared"])
        p.set_defaults(func=cmd_models_push)

    push_arguments(sub.add_parser("register", parents=[common], help="register a model (models push)"))
    models = sub.add_parser("models", parents=[common], help="models: push | list | show | rm")
    models.set_defaults(func=cmd_models_list)
    models_sub = models.add_subparsers(dest="models_command")
    push_arguments(models_sub.add_parser("push", parents=[common], help="register a model (the next version)"))
    models_sub.add_parser("list", parents=[common], help="list models").set_defaults(func=cmd_models_list)
    for name, func, text in (("show", cmd_models_show, "describe a model"), ("rm", cmd_models_rm, "delete a model")):
        p = models_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("name")
        p.add_argument("--version", type=int)
        p.set_defaults(func=func)

    unquarantine = sub.add_parser("unquarantine", parents=[common], help="let a quarantined model serve again (admin)")
    unquarantine.add_argument("name")
    unquarantine.add_argument("--version", type=int)
    unquarantine.set_defaults(func=cmd_unquarantine)

    for name, func in (("predict", cmd_predict), ("explain", cmd_explain)):
        p = sub.add_parser(name, parents=[common], help=f"{name} rows, images or texts")
        p.add_argument("model")
        p.add_argument("rows", nargs="?", help="JSON rows: a file, '-' for stdin, or inline JSON")
        p.add_argument("--image", action="append", default=[], help="a PNG/JPEG file to send (repeatable)")
        p.add_argument("--text", action="append", default=[], help="a text to send (repeatable)")
        p.add_argument("--version", type=int)
        p.add_argument("--variant")
        p.set_defaults(func=func)
        if name == "explain":
            p.add_argument("--method", default="auto")
            p.add_argument("--param", action="append", default=[], help="method parameter, key=value")
            p.add_argument("--target", action="append", default=[], help="class to explain (repeatable)")
            p.add_argument("--heatmaps", help="write each image answer's heatmap PNG into this directory")
            p.add_argument("--wait", type=float, default=10.0, help="seconds the server waits before a job (202)")
            p.add_argument("--no-wait", action="store_true", help="submit and print the job; do not wait")
            p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the job")
            _submission_arguments(p)

    cf = sub.add_parser("counterfactual", parents=[common], help="what would have to change: counterfactuals of rows")
    cf.add_argument("model")
    cf.add_argument("rows", help="JSON rows: a file, '-' for stdin, or inline JSON")
    cf.add_argument("--desired", help="the class to reach (default for two classes: the other one)")
    cf.add_argument("--desired-range", help="regression: LOW,HIGH (either may be empty)")
    cf.add_argument("--immutable", help="features that must not change, comma-separated")
    cf.add_argument("--increase-only", help="features that may only increase, comma-separated")
    cf.add_argument("--decrease-only", help="features that may only decrease, comma-separated")
    cf.add_argument("--integer", help="features taking whole values, comma-separated")
    cf.add_argument("--constraints", help="a JSON file of constraints (ranges, categories, ...)")
    cf.add_argument("--param", action="append", default=[], help="k=3, samples=1000, seed=0")
    cf.add_argument("--version", type=int)
    cf.add_argument("--variant")
    cf.set_defaults(func=cmd_counterfactual)

    sg = sub.add_parser("surrogate", parents=[common], help="the model's global surrogate tree: fidelity and rules")
    sg.add_argument("model")
    sg.add_argument("--max-depth", type=int)
    sg.add_argument("--version", type=int)
    sg.set_defaults(func=cmd_surrogate)

    audit = sub.add_parser("audit", parents=[common], help="audit a dataset and download its report")
    audit.add_argument("model")
    audit.add_argument(
        "dataset", help="CSV, Parquet or JSON Lines file (texts: a 'text' column), or a zip of images with labels.csv"
    )
    audit.add_argument("--out", required=True, help="where to write the HTML report")
    audit.add_argument("--rows", help="where to write the per-row results (.parquet, .csv or .jsonl)")
    audit.add_argument("--label", help="ground-truth column")
    audit.add_argument("--sensitive", action="append", default=[], help="sensitive column (repeatable)")
    audit.add_argument("--positive", help="the class fairness compares (default: the last of two)")
    audit.add_argument("--method", default="auto")
    audit.add_argument("--param", action="append", default=[], help="method parameter, key=value")
    audit.add_argument("--on-bad-rows", choices=["reject", "skip"])
    audit.add_argument("--title")
    audit.add_argument("--recourse", action="store_true", help="report recourse (counterfactual cost) by group")
    audit.add_argument("--version", type=int)
    audit.add_argument("--variant")
    audit.add_argument(
        "--variants",
        help="compression study: compare these ready variants with fp32, e.g. int8_static,prune_structured",
    )
    audit.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the audit")
    _submission_arguments(audit)
    audit.set_defaults(func=cmd_audit)

    audits = sub.add_parser("audits", help="audits: show | cancel | download")
    audits_sub = audits.add_subparsers(dest="audits_command", required=True)
    for name, func, text in (("show", cmd_audits_show, "show an audit"), ("cancel", cmd_audits_cancel, "cancel one")):
        p = audits_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("id")
        p.set_defaults(func=func)
    download = audits_sub.add_parser("download", parents=[common], help="download a finished audit's files")
    download.add_argument("id")
    download.add_argument("--report", help="where to write the HTML report")
    download.add_argument("--rows", help="where to write the per-row results (.parquet, .csv or .jsonl)")
    download.set_defaults(func=cmd_audits_download)

    jobs = sub.add_parser("jobs", help="jobs: show | cancel | wait (there is no job listing route)")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, func, text in (
        ("show", cmd_jobs_show, "show a job"),
        ("cancel", cmd_jobs_cancel, "cancel a job"),
        ("wait", cmd_jobs_wait, "wait for a job, with a progress bar"),
    ):
        p = jobs_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("id")
        p.add_argument("--timeout", type=float, default=600.0, help=argparse.SUPPRESS if name != "wait" else None)
        p.set_defaults(func=func)
    job = sub.add_parser("job", help="show or cancel a job (JSON)")
    job.add_argument("id")
    job.add_argument("--cancel", action="store_true")
    job.set_defaults(func=cmd_job)

    variants = sub.add_parser("variants", help="variants: build | list | show (no delete route)")
    variants_sub = variants.add_subparsers(dest="variants_command", required=True)
    build = variants_sub.add_parser("build", parents=[common], help="build a quantized or pruned variant")
    build.add_argument("model")
    build.add_argument("kind", help="int8_dynamic, int8_static, fp16, prune_magnitude, prune_structured, ...")
    build.add_argument("--sparsity", type=float)
    build.add_argument("--version", type=int)
    build.add_argument("--no-wait", action="store_true", help="queue the build and print its job")
    build.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the build")
    _submission_arguments(build)
    build.set_defaults(func=cmd_variants_build)
    for name, func, text in (("list", cmd_variants_list, "list variants"), ("show", cmd_variants_show, "one variant")):
        p = variants_sub.add_parser(name, parents=[common], help=text)
        p.add_argument("model")
        if name == "show":
            p.add_argument("kind")
        p.add_argument("--version", type=int)
        p.set_defaults(func=func)
    return parser


def _submission_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--callback-url", help="POST the job (or audit) here when it ends, signed (webhook)")
    p.add_argument("--idempotency-key", help="a retried submission with this key returns the first one's job")


def main(argv: list[str] | None = None) -> int:
    """Run the ``onnxplain`` command line."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "keys":
        args.rest = [*args.rest, *extra]  # everything after `keys` is the key tool's, --help included
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
