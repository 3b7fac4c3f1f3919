"""Who may see and manage a model: its owning tenant, and whether it is shared with every tenant.

Kept per model name in ``name/access.json`` beside the version directories::

    {"tenant": "acme", "shared": false}

A model registered through the API is owned by the registering key's tenant, private unless registered with
``visibility=shared``. A model placed in the store by hand (no ``access.json``) belongs to the operator: shared
with every tenant, and managed by any ``admin`` key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import Conflict, NotFound
from engine.files import settled, write_atomic
from engine.models.card import NAME_PATTERN

PRIVATE, SHARED = "private", "shared"
VISIBILITIES = (PRIVATE, SHARED)


@dataclass(frozen=True)
class Access:
    """A model name's owner (``None``: placed by the operator) and visibility."""

    tenant: str | None
    shared: bool

    @property
    def visibility(self) -> str:
        """``shared`` or ``private``."""
        return SHARED if self.shared else PRIVATE

    def readable_by(self, tenant: str) -> bool:
        """Whether ``tenant`` may see the model (list, read, predict, explain, audit)."""
        return self.shared or self.tenant is None or self.tenant == tenant

    def manageable_by(self, tenant: str) -> bool:
        """Whether ``tenant``'s admin keys may add versions, delete it or build its variants."""
        return self.tenant is None or self.tenant == tenant


OPERATOR = Access(tenant=None, shared=True)


class ModelAccess:
    """Reads and writes the ``access.json`` of each model name under the store root.

    Args:
        root: The model store root (``settings.model_dir``).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root_text = str(self.root)  # every request stats a name's file: joined as text, not by pathlib
        self._read: dict[str, tuple[tuple[int, int, int], Access]] = {}  # name → (access.json's stat, access)

    def _path(self, name: str) -> Path:
        return self.root / name / "access.json"

    def of(self, name: str) -> Access:
        """Return the access of ``name`` (:data:`OPERATOR` when none was recorded)."""
        if not NAME_PATTERN.fullmatch(name):
            return OPERATOR  # not a model name: nothing to read (the store then answers model_not_found)
        path = os.path.join(self._root_text, name, "access.json")
        try:
            status = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return OPERATOR
        stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
        known = self._read.get(name)
        if known is not None and known[0] == stamp:
            return known[1]  # read once per change of the file (every request asks; it is written atomically)
        try:
            data = json.loads(Path(path).read_text())
        except (FileNotFoundError, NotADirectoryError):
            return OPERATOR
        found = Access(tenant=data.get("tenant"), shared=bool(data.get("shared", False)))
        if settled(status):
            self._read[name] = (stamp, found)
        return found

    def check_readable(self, name: str, tenant: str) -> None:
        """Raise ``model_not_found`` unless ``tenant`` may see ``name``: others' private models do not exist."""
        if not self.of(name).readable_by(tenant):
            raise NotFound(f"no model named {name!r}", code="model_not_found", field="name")

    def check_manageable(self, name: str, tenant: str) -> None:
        """Raise unless ``tenant`` may manage ``name``: 404 when it cannot see it, 409 ``model_not_owned`` else."""
        self.check_readable(name, tenant)
        if not self.of(name).manageable_by(tenant):
            raise Conflict(f"model {name!r} is shared by another tenant; only it may change it", code="model_not_owned")

    def claim(self, name: str, tenant: str, visibility: str | None) -> bool:
        """Record ``tenant`` as the owner of a new name, or check it owns an existing one (before an upload).

        Args:
            name: The model name.
            tenant: The registering tenant.
            visibility: ``private``/``shared``; ``None`` keeps the current one (``private`` for a new name).

        Returns:
            Whether this call recorded a new owner (undo it with :meth:`release` if the upload then fails).

        Raises:
            Conflict: ``model_name_taken`` when another tenant owns the name.
        """
        path = self._path(name)
        if not path.exists() and path.parent.is_dir() and any(p.name.isdigit() for p in path.parent.iterdir()):
            return False  # the operator's model: any admin adds versions, nobody takes it over
        path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"tenant": tenant, "shared": visibility == SHARED})
        try:
            # O_EXCL: of two tenants registering a new name at once, exactly one owns it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            current = self.of(name)
            if not current.manageable_by(tenant):
                raise Conflict(f"the model name {name!r} belongs to another tenant", code="model_name_taken") from None
            if visibility is not None and visibility != current.visibility:
                write_atomic(path, json.dumps({"tenant": current.tenant or tenant, "shared": visibility == SHARED}))
            return False
        with os.fdopen(fd, "w") as out:
            out.write(record)
        return True

    def release(self, name: str) -> None:
        """Forget the owner of a name that has no version (its first upload failed)."""
        directory = self.root / name
        if directory.is_dir() and not any(p.name.isdigit() for p in directory.iterdir()):
            self._path(name).unlink(missing_ok=True)
            try:
                directory.rmdir()  # leave the store as the failed upload found it
            except OSError:
                pass  # something else arrived meanwhile
