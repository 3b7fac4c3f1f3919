"""The ``onnxplain`` command line: run the service, and use it over HTTP.

Server commands (``up``, ``serve``, ``worker``) start processes; the others
talk to a running server (``--url``, or ``ONNXPLAIN_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from client import launcher
from client.sdk import ApiError, Client

DEMO = Path(__file__).resolve().parent.parent / "demo"


def _rows(source: str) -> list[Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text() if Path(source).exists() else source
    data = json.loads(text)
    rows: list[Any] = data["instances"] if isinstance(data, dict) else data
    return rows


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


def _self_command() -> str:
    """How this CLI was started, so a printed command line works as it is (``.venv/bin/onnxplain``)."""
    script = Path(sys.argv[0])
    if script.name == "onnxplain":
        return str(script)
    return f"{sys.executable} -m client.cli"


def cmd_up(args: argparse.Namespace) -> int:
    """Start Redis (embedded unless configured), workers and the API; register the demo model."""
    env = dict(os.environ)
    # The API and the workers must agree on the stores whatever their working directories.
    env.setdefault("ONNXPLAIN_MODEL_DIR", str(Path("var/models").resolve()))
    env.setdefault("ONNXPLAIN_AUDIT_DIR", str(Path("var/audits").resolve()))
    redis = None
    if not env.get("ONNXPLAIN_REDIS_URL"):
        redis = launcher.start_redis(persist=True)
        env["ONNXPLAIN_REDIS_URL"] = redis.url
        print(f"started an embedded Redis at {redis.url}")
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    procs = [launcher.start_worker(env) for _ in range(args.workers)]
    procs.append(launcher.start_api(env, host=args.host, port=args.port, workers=args.api_workers))
    url = f"http://{args.host}:{args.port}"
    try:
        _wait_ready(url)
        api = Client(url)
        card = json.loads((DEMO / "card.json").read_text())
        if not any(m["name"] == card["name"] for m in api.models()):
            api.register(DEMO / "credit.onnx", card, background=DEMO / "background.csv")
        row = json.loads((DEMO / "example.json").read_text())
        print(f"\nonnxplain is running at {url} with the demo model '{card['name']}'. Try:\n")
        print(f"  curl -s {url}/v1/models/{card['name']}:predict -H 'Content-Type: application/json' \\")
        print(f"    -d '{json.dumps({'instances': [row]})}'\n")
        print(f"  curl -s {url}/v1/models/{card['name']}:explain -H 'Content-Type: application/json' \\")
        print(f"    -d '{json.dumps({'instances': [row], 'method': 'kernel_shap', 'wait': 30})}'\n")
        print("  and audit 2,000 applicants (report and per-row file written here):\n")
        print(f"  {_self_command()} --url {url} audit {card['name']} {DEMO / 'applicants.csv'} \\")
        print("    --label outcome --sensitive sex --sensitive age_band --out report.html --rows rows.parquet\n")
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
        if redis is not None:
            redis.stop()


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the API under gunicorn in the foreground."""
    return launcher.start_api(dict(os.environ), host=args.host, port=args.port, workers=args.api_workers).wait()


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker in the foreground."""
    return launcher.start_worker(dict(os.environ)).wait()


def cmd_register(args: argparse.Namespace) -> int:
    """Register an ONNX model with its card (and optional background)."""
    card = json.loads(Path(args.card).read_text())
    if args.name:
        card["name"] = args.name
    _print(Client(args.url).register(args.model, card, background=args.background))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """List models, or describe one."""
    api = Client(args.url)
    _print(api.model(args.name) if args.name else [{"name": m["name"], "version": m["version"]} for m in api.models()])
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Predict rows given as JSON (a file, '-' for stdin, or inline)."""
    _print(Client(args.url).predict(args.model, _rows(args.rows), version=args.version, variant=args.variant))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    """Explain rows, waiting for the job."""
    result = Client(args.url).explain(
        args.model,
        _rows(args.rows),
        method=args.method,
        parameters=_params(args.param) or None,
        targets=args.target or None,
        version=args.version,
        variant=args.variant,
    )
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
    api = Client(args.url)
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
    api = Client(args.url)
    _print(api.cancel(args.id) if args.cancel else api.job(args.id))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every command."""
    parser = argparse.ArgumentParser(prog="onnxplain", description=__doc__)
    parser.add_argument("--url", default=os.environ.get("ONNXPLAIN_URL", "http://127.0.0.1:8000"))
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

    reg = sub.add_parser("register", help="register a model")
    reg.add_argument("model")
    reg.add_argument("--card", required=True)
    reg.add_argument("--background")
    reg.add_argument("--name")
    reg.set_defaults(func=cmd_register)

    models = sub.add_parser("models", help="list models or describe one")
    models.add_argument("name", nargs="?")
    models.set_defaults(func=cmd_models)

    for name, func in (("predict", cmd_predict), ("explain", cmd_explain)):
        p = sub.add_parser(name, help=f"{name} rows")
        p.add_argument("model")
        p.add_argument("rows", help="JSON rows: a file, '-' for stdin, or inline JSON")
        p.add_argument("--version", type=int)
        p.add_argument("--variant")
        p.set_defaults(func=func)
        if name == "explain":
            p.add_argument("--method", default="auto")
            p.add_argument("--param", action="append", default=[], help="method parameter, key=value")
            p.add_argument("--target", action="append", default=[], help="class to explain (repeatable)")

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
    args = build_parser().parse_args(argv)
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
