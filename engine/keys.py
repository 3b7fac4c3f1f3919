"""API keys: a keys file holding only keyed hashes, each key with a tenant and scopes.

A key looks like ``onx_<id>_<secret>``. The file (``ONNXPLAIN_KEYS_FILE``, JSON) stores, per key, its public
``id``, ``tenant``, ``scopes`` and ``HMAC-SHA256(server secret, key)`` — never the key itself. The server secret
is ``ONNXPLAIN_KEYS_SECRET``, or else the file ``<keys file>.secret`` (mode 0600) that the first ``add`` creates.
The API re-reads the file whenever it changes, so keys are added and revoked without a restart::

    python -m engine.keys add --tenant acme --scopes explain,read   # prints the key, once
    python -m engine.keys list
    python -m engine.keys revoke 3f2a9c01d4e5
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Forbidden, InvalidRequest, NotFound, Unauthorized
from engine.files import write_atomic
from engine.settings import Settings
from engine.timestamps import utc_now

ADMIN, EXPLAIN, READ = "admin", "explain", "read"
SCOPES = (ADMIN, EXPLAIN, READ)
"""``admin``: register and delete models, build variants; ``explain``: predict, explain, audits, cancel jobs;
``read``: list and read models, jobs and audits."""

PREFIX = "onx_"
TENANT_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ID_LENGTH = 12
_TOKEN = re.compile(rf"^{PREFIX}([0-9a-f]{{{_ID_LENGTH}}})_([A-Za-z0-9_-]{{20,128}})$")
_HASH_SCHEME = "hmac-sha256:"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, its tenant and its scopes."""

    key_id: str
    tenant: str
    scopes: frozenset[str]

    def require(self, scope: str) -> None:
        """Raise :class:`~engine.errors.Forbidden` (``insufficient_scope``) unless the key holds ``scope``."""
        if scope not in self.scopes:
            raise Forbidden(f"this key lacks the {scope!r} scope", code="insufficient_scope", scope=scope)


@dataclass(frozen=True)
class KeyRecord:
    """One entry of the keys file."""

    id: str
    tenant: str
    scopes: tuple[str, ...]
    hash: str
    created: str
    name: str = ""

    def public(self) -> dict[str, Any]:
        """Return the entry without its hash, as ``keys list`` shows it."""
        return {"id": self.id, "tenant": self.tenant, "scopes": list(self.scopes), "name": self.name,
                "created": self.created}  # fmt: skip


def secret_path(keys_file: Path) -> Path:
    """Return the path of the server-secret file kept beside ``keys_file``."""
    return keys_file.with_name(keys_file.name + ".secret")


def server_secret(settings: Settings, *, create: bool = False) -> bytes | None:
    """Return the HMAC secret: ``keys_secret`` when set, else the secret file (created when asked)."""
    if settings.keys_secret:
        return settings.keys_secret.encode()
    path = secret_path(settings.keys_file)
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as out:
        out.write(secrets.token_hex(32).encode())
    return path.read_bytes().strip()


def hash_key(secret: bytes, key: str) -> str:
    """Return the stored form of ``key``: its HMAC-SHA256 under the server secret."""
    return _HASH_SCHEME + hmac.new(secret, key.encode(), hashlib.sha256).hexdigest()


def _parse(data: object) -> dict[str, KeyRecord]:
    keys = data.get("keys", []) if isinstance(data, dict) else []
    records: dict[str, KeyRecord] = {}
    for item in keys if isinstance(keys, list) else []:
        try:
            record = KeyRecord(
                id=str(item["id"]),
                tenant=str(item["tenant"]),
                scopes=tuple(s for s in item["scopes"] if s in SCOPES),
                hash=str(item["hash"]),
                created=str(item.get("created", "")),
                name=str(item.get("name", "")),
            )
        except (KeyError, TypeError):
            continue  # a hand-edited entry we cannot read grants nothing
        records[record.id] = record
    return records


def read_keys(path: Path) -> dict[str, KeyRecord]:
    """Read the keys file (an absent file holds no keys)."""
    try:
        return _parse(json.loads(path.read_text()))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidRequest(f"the keys file {path} is not valid JSON: {exc}", code="invalid_keys_file") from exc


GRANTED_KEYS = 4096
"""Keys a process remembers as checked, per version of the keys file (only keys that passed: no flood fills it)."""


class KeyRing:
    """The keys of one keys file, re-read whenever the file changes (checked by ``stat`` per call).

    Args:
        settings: Supplies ``keys_file`` and the server secret.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = Path(settings.keys_file)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._path_text = str(self.path)
        self._records: dict[str, KeyRecord] = {}
        self._secret: bytes | None = None
        self._granted: dict[str, Principal] = {}

    def _current(self) -> tuple[dict[str, KeyRecord], bytes | None, dict[str, Principal]]:
        try:
            st = os.stat(self._path_text)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp or self._secret is None:
                try:
                    self._records = read_keys(self.path) if stamp is not None else {}
                except InvalidRequest:
                    self._records = {}  # a broken file grants nothing (fail closed) until it is fixed
                self._secret = server_secret(self.settings)
                self._stamp = stamp
                self._granted = {}  # a revoked key, or a new secret, must be checked again
            return self._records, self._secret, self._granted

    def authenticate(self, key: str) -> Principal:
        """Return the principal of ``key``.

        Raises:
            Unauthorized: ``invalid_key`` for a malformed, unknown or revoked key.
        """
        records, secret, granted = self._current()
        found = granted.get(key)
        if found is not None:
            # This exact key passed the check below since the file last changed. A lookup by the whole key tells
            # an attacker nothing a 200 would not: the misses still pay the hash, hit or unknown id alike.
            return found
        match = _TOKEN.match(key)
        record = records.get(match.group(1)) if match else None
        # Hash and compare even when the id is unknown, so a miss costs what a hit costs.
        expected = record.hash if record is not None else _HASH_SCHEME + "0" * 64
        given = hash_key(secret or b"no secret configured", key)
        if not hmac.compare_digest(given.encode(), expected.encode()) or record is None or secret is None:
            raise Unauthorized("the API key is invalid or revoked", code="invalid_key")
        principal = Principal(record.id, record.tenant, frozenset(record.scopes))
        if len(granted) < GRANTED_KEYS:
            granted[key] = principal  # the HMAC was 14 µs of every request's ~400 in process
        return principal


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of the keys file (a lock file beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _write(path: Path, records: dict[str, KeyRecord]) -> None:
    entries = [{**r.public(), "hash": r.hash} for r in records.values()]
    write_atomic(path, json.dumps({"keys": entries}, indent=2) + "\n")
    os.chmod(path, 0o600)


def add_key(settings: Settings, tenant: str, scopes: list[str], *, name: str = "") -> tuple[str, KeyRecord]:
    """Create a key for ``tenant`` with ``scopes``; return the key (shown once) and its stored record.

    Raises:
        InvalidRequest: ``invalid_tenant`` or ``invalid_scope``.
    """
    if not TENANT_PATTERN.match(tenant):
        raise InvalidRequest(f"tenant must match {TENANT_PATTERN.pattern}", code="invalid_tenant", field="tenant")
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise InvalidRequest(f"scopes must be some of {list(SCOPES)}", code="invalid_scope", field="scopes")
    secret = server_secret(settings, create=True)
    assert secret is not None
    key_id = secrets.token_hex(_ID_LENGTH // 2)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = KeyRecord(key_id, tenant, tuple(s for s in SCOPES if s in scopes), hash_key(secret, key), utc_now(), name)
    with _locked(settings.keys_file):
        records = read_keys(settings.keys_file)
        records[key_id] = record
        _write(settings.keys_file, records)
    return key, record


def revoke_key(settings: Settings, key_id: str) -> KeyRecord:
    """Remove a key from the file; the API refuses it from its next request on.

    Raises:
        NotFound: ``key_not_found``.
    """
    with _locked(settings.keys_file):
        records = read_keys(settings.keys_file)
        record = records.pop(key_id, None)
        if record is None:
            raise NotFound(f"no key {key_id!r}", code="key_not_found", field="id")
        _write(settings.keys_file, records)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m engine.keys add|list|revoke``: manage the keys file named by the settings."""
    parser = argparse.ArgumentParser(prog="onnxplain keys", description="Manage API keys (the keys file).")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", parents=[common], help="create a key and print it (it is shown only once)")
    add.add_argument("--tenant", required=True)
    add.add_argument("--scopes", default="explain,read", help="comma-separated: admin, explain, read")
    add.add_argument("--name", default="", help="a note, e.g. who holds the key")
    sub.add_parser("list", parents=[common], help="list keys (never their secrets)")
    revoke = sub.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("id")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if args.action == "add":
            key, record = add_key(settings, args.tenant, [s for s in args.scopes.split(",") if s], name=args.name)
            out: Any = {"key": key, **record.public()}
            text = f"{key}\n(id {record.id}, tenant {record.tenant}, scopes {','.join(record.scopes)})"
        elif args.action == "list":
            out = [r.public() for r in read_keys(settings.keys_file).values()]
            rows = [
                f"{r['id']}  {r['tenant']:<16} {','.join(r['scopes']):<20} {r['created']}  {r['name']}" for r in out
            ]
            text = "\n".join(
                ["id            tenant           scopes               created                   name", *rows]
            )
        else:
            out = revoke_key(settings, args.id).public()
            text = f"revoked {args.id}"
    except (InvalidRequest, NotFound) as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
