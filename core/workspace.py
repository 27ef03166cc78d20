"""Per-person workspaces: where one browser session's uploads, extracted data and runs live.

A workspace is a folder under the cache named by a random id. The app keeps the
id in the page URL (``?ws=…``), so a refresh reattaches to the same files and
runs, and another session never sees them unless it is given that URL. Deleting
a workspace removes everything in it. No Streamlit here: pages call this.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from core.data import cache_dir

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
SESSION_FILE = "session.json"


def new_id() -> str:
    """A fresh unguessable workspace id (URL-safe, 22 characters)."""
    return secrets.token_urlsafe(16)


def valid_id(wid) -> bool:
    return isinstance(wid, str) and bool(ID_PATTERN.match(wid))


def workspaces_root() -> Path:
    d = cache_dir() / "workspaces"
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass(frozen=True)
class Workspace:
    id: str

    def __post_init__(self):
        if not valid_id(self.id):
            raise ValueError(f"workspace: Expected 16-64 letters, digits, '-' or '_'. Received: {self.id!r}")

    @classmethod
    def open(cls, wid: str | None = None) -> "Workspace":
        """The workspace ``wid`` when it is a well-formed id, else a new one."""
        return cls(wid if valid_id(wid) else new_id())

    @property
    def root(self) -> Path:
        d = workspaces_root() / self.id
        d.mkdir(parents=True, exist_ok=True)
        return d

    def folder(self, *parts: str) -> Path:
        """A subfolder of the workspace (created), e.g. ``folder("uploads", "data")``."""
        d = self.root.joinpath(*parts)
        d.mkdir(parents=True, exist_ok=True)
        return d

    @property
    def runs_dir(self) -> Path:
        return self.folder("runs")

    @property
    def store_path(self) -> Path:
        return self.root / "runs.sqlite"

    def exists(self) -> bool:
        return (workspaces_root() / self.id).is_dir()

    def size_bytes(self) -> int:
        base = workspaces_root() / self.id
        return sum(p.stat().st_size for p in base.rglob("*") if p.is_file()) if base.is_dir() else 0

    def delete(self) -> None:
        """Remove every upload, extracted dataset and run of this workspace."""
        shutil.rmtree(workspaces_root() / self.id, ignore_errors=True)

    # -- the experiment in progress: what a browser refresh brings back ------------------------

    def session_text(self, config, data=None, **fields) -> str:
        """The experiment being set up (config, chosen dataset and its split, ``fields`` such as
        the dataset's name and path) as the JSON :meth:`save_session` writes."""
        from core.worker import data_spec

        report = None
        if data is not None:  # what the Data page reports besides the split: skipped files, formats and sizes
            report = {"skipped": [[s.path, s.reason, s.label] for s in data.skipped], "notes": list(data.notes),
                      "warnings": list(data.warnings), "test_from": data.test_from, "origins": dict(data.origins),
                      "file_info": {p: list(v) for p, v in data.file_info.items()}}
        return json.dumps({"config": config.to_dict(), "data": data_spec(data) if data is not None else None,
                           "report": report, "fields": fields}, sort_keys=True)

    def save_session(self, text: str) -> None:
        """Keep :meth:`session_text` in the workspace (written whole: a crash leaves the last one)."""
        tmp = self.root / f"{SESSION_FILE}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.root / SESSION_FILE)

    def load_session(self):
        """``(config, data, fields)`` as last saved, or None (none saved, or unreadable: the app
        then starts afresh rather than fail). ``data`` is None when its files have gone. A saved
        setting that fails its check (a file edited by hand, or written by another version) is
        back at its default, named in ``fields["reset"]``."""
        from core.config import ExperimentConfig
        from core.data import Skipped
        from core.worker import data_from_spec

        f = workspaces_root() / self.id / SESSION_FILE
        try:
            saved = json.loads(f.read_text(encoding="utf-8"))
            config, reset = ExperimentConfig.from_dict(saved["config"]).mended()
            data = data_from_spec(saved["data"]) if saved.get("data") else None
            fields = dict(saved.get("fields") or {})
            report = saved.get("report") or {}
            if data is not None and report:
                data.skipped = [Skipped(*row) for row in report.get("skipped", [])]
                data.notes, data.warnings = list(report.get("notes", [])), list(report.get("warnings", []))
                data.test_from, data.origins = str(report.get("test_from", "")), dict(report.get("origins", {}))
                data.file_info = {p: tuple(v) for p, v in report.get("file_info", {}).items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        fields["reset"] = reset
        if data is not None and not all(Path(q).is_file() for part in (data.train, data.validation, data.test)
                                        if part is not None for q in part.paths):
            data = None  # moved or deleted since: choose the data again
        return config, data, fields
