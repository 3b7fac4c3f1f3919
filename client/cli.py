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
from pathlib import Path
from typing import Any

import httpx

from client import launcher
from client.sdk import ApiError, Client

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


def cmd_register(args: argparse.Namespace) -> int:
    """Register an ONNX model with its card (and optional background)."""
    card = json.loads(Path(args.card).read_text())
    if args.name:
        card["name"] = args.name
    _print(Client(args.url, api_key=args.api_key).register(args.model, card, background=args.background))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List models, or describe one."""
    api = Client(args.url, api_key=args.api_key)
    _print(api.model(args.name) if args.name else [{"name": m["name"], "version": m["version"]} for m in api.models()])
    return 0


def cmd_unquarantine(args: argparse.Namespace) -> int:
    """Clear a model's quarantine (every version, or ``--version``): an operator's call, scope admin."""
    _print(Client(args.url, api_key=args.api_key).clear_quarantine(args.name, args.version))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict rows given as JSON (a file, '-' for stdin, or inline)."""
    _print(
        Client(args.url, api_key=args.api_key).predict(
            args.model, _inputs(args), version=args.version, variant=args.variant
        )
    )
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain rows, waiting for the job."""
    result = Client(args.url, api_key=args.api_key).explain(
        args.model,
        _inputs(args),
        method=args.method,
        parameters=_params(args.param) or None,
        targets=args.target or None,
        version=args.version,
        variant=args.variant,
    )
    if args.heatmaps:
        _save_heatmaps(result, args.heatmaps)
    _print(result)
    return 0


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
        if self.bar is not None:
            if self.task is None:
                self.task = self.bar.add_task(text, total=p["rows_total"])
            self.bar.update(self.task, completed=p["rows_done"], description=text)
        else:
            print(f"\r{text} ({100 * p['fraction']:.0f} %)   ", end="", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        else:
            print(file=sys.stderr)


def cmd_audit(args: argparse.Namespace) -> int:
    """Audit a dataset: submit it, show the progress, download the report (and the per-row results)."""
    api = Client(args.url, api_key=args.api_key)
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
        suffix = Path(args.rows).suffix.lower()
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "parquet")
        api.audit_rows(done["id"], format=fmt, out=args.rows)
    summary = done["summary"]
    _print(
        {
            "id": done["id"],
            "status": done["status"],
            "report": args.out,
            "rows_file": args.rows,
            "rows": summary["rows"],
            "skipped_rows": summary["skipped_rows"],
            "failed_rows": summary["failed_rows"],
            "global_importance": [{g["feature"]: g["mean_abs"]} for g in summary["global_importance"][:5]],
            "fairness_flags": summary["fairness"]["flags"],
        }
    )
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    """Show, or cancel, a job."""
    api = Client(args.url, api_key=args.api_key)
    _print(api.cancel(args.id) if args.cancel else api.job(args.id))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every command."""
    parser = argparse.ArgumentParser(prog="onnxplain", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("ONNXPLAIN_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--api-key", default=None, help="API key (default: ONNXPLAIN_API_KEY)")
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

    reg = sub.add_parser("register", help="register a model")
    reg.add_argument("model")
    reg.add_argument("--card", required=True)
    reg.add_argument("--background")
    reg.add_argument("--name")
    reg.set_defaults(func=cmd_register)

    models = sub.add_parser("models", help="list models or describe one")
    models.add_argument("name", nargs="?")
    models.set_defaults(func=cmd_models)

    unquarantine = sub.add_parser("unquarantine", help="let a quarantined model serve again (admin)")
    unquarantine.add_argument("name")
    unquarantine.add_argument("--version", type=int)
    unquarantine.set_defaults(func=cmd_unquarantine)

    for name, func in (("predict", cmd_predict), ("explain", cmd_explain)):
        p = sub.add_parser(name, help=f"{name} rows, images or texts")
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

    audit = sub.add_parser("audit", help="audit a dataset and download its report")
    audit.add_argument("model")
    audit.add_argument("dataset", help="CSV, Parquet or JSON Lines file")
    audit.add_argument("--out", required=True, help="where to write the HTML report")
    audit.add_argument("--rows", help="where to write the per-row results (.parquet, .csv or .jsonl)")
    audit.add_argument("--label", help="ground-truth column")
    audit.add_argument("--sensitive", action="append", default=[], help="sensitive column (repeatable)")
    audit.add_argument("--positive", help="the class fairness compares (default: the last of two)")
    audit.add_argument("--method", default="auto")
    audit.add_argument("--param", action="append", default=[], help="method parameter, key=value")
    audit.add_argument("--on-bad-rows", choices=["reject", "skip"])
    audit.add_argument("--title")
    audit.add_argument("--version", type=int)
    audit.add_argument("--variant")
    audit.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait for the audit")
    audit.set_defaults(func=cmd_audit)

    job = sub.add_parser("job", help="show or cancel a job")
    job.add_argument("id")
    job.add_argument("--cancel", action="store_true")
    job.set_defaults(func=cmd_job)
    return parser


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
