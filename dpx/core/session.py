"""Working sessions: one folder per experiment, never overwritten by accident.

::

    <session>/dataset/     the samples (see dpx.core.storage)
    <session>/network/     saved network parameters
    <session>/stats/       training curves
    <session>/session.json the record of every run: configs, seeds, plugin versions
    <session>/info.txt     the same, for humans
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
from pathlib import Path
from typing import Any

from dpx.core.config import ConfigError
from dpx.core.storage import copy_dataset

SUBFOLDERS = ("dataset", "network", "stats")
RECORD = "session.json"
#: Pipelines whose runs add samples to their session's dataset (Prediction records apart, in its own mode).
PRODUCING = ("DataGeneration", "Training")

log = logging.getLogger("dpx.session")


def check_session_name(owner: str, session_name: str) -> None:
    """Refuse a ``session_name`` that is not one plain folder: ``'..'`` would write beside ``session_dir``."""
    separators = {"/", "\0", os.sep, os.altsep or "/"}
    if session_name in ("", ".", "..") or any(sep in session_name for sep in separators):
        raise ConfigError(
            f"{owner}: session_name={session_name!r} must be a plain folder name (not empty, '.' or '..', "
            "no '/'); put folders in session_dir"
        )


def outcome_of(exc: BaseException) -> str:
    """How a run that raised ``exc`` ended, as ``session.json`` records it."""
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"failed: {type(exc).__name__}: {first_line}"


def newer_sessions(path: str | os.PathLike) -> list[Path]:
    """The sessions a re-run made beside ``path`` (``name_1``, ``name_2``...), newest last."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(re.escape(path.name) + r"_(\d+)")
    found = [(int(m.group(1)), p) for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


class Session:
    """A session folder and its record."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    @classmethod
    def start(cls, session_dir: str | os.PathLike, session_name: str, new_session: bool = True) -> Session:
        """Create a session, or reopen it when ``new_session`` is False.

        A new session never overwrites an existing folder: ``name`` becomes
        ``name_1``, ``name_2``... as in DeepPhysX.
        """
        check_session_name("Session", session_name)
        base = Path(session_dir) / session_name
        path = base
        if new_session:
            suffix = 0
            while True:
                try:
                    path.mkdir(parents=True)
                    break
                except FileExistsError:
                    suffix += 1
                    path = base.with_name(f"{session_name}_{suffix}")
            if suffix:
                log.warning("dpx: %s exists, so this run writes to the new session %s "
                            "(new_session=False would resume %s instead)", base, path, base)
        session = cls(path)
        for sub in SUBFOLDERS:
            (path / sub).mkdir(parents=True, exist_ok=True)
        return session

    @classmethod
    def for_dataset(
        cls, existing_dir: str | None, session_dir: str | os.PathLike, session_name: str, new_session: bool
    ) -> Session:
        """The session a pipeline writes to, given ``DatabaseConfig.existing_dir``.

        Without an existing dataset: :meth:`start`. With one: a new session
        gets a copy of it (the original is never modified); ``new_session=False``
        works in the existing session itself.
        """
        if existing_dir is None:
            return cls.start(session_dir, session_name, new_session)
        source = existing_dataset(existing_dir)
        if not new_session:
            session = cls(dataset_session(existing_dir))
            for sub in SUBFOLDERS:
                (session.path / sub).mkdir(parents=True, exist_ok=True)
            return session
        session = cls.start(session_dir, session_name, True)
        copy_dataset(source, session.dataset_dir)
        return session

    @staticmethod
    def reopened(existing_dir: str | None, session_dir: str | os.PathLike, session_name: str,
                 new_session: bool) -> Path | None:
        """The existing folder :meth:`for_dataset` would work in, or None when it makes a new one."""
        if new_session:
            return None
        if existing_dir is not None:
            return dataset_session(existing_dir)
        return Path(session_dir) / session_name

    @property
    def dataset_dir(self) -> Path:
        return self.path / "dataset"

    @property
    def network_dir(self) -> Path:
        return self.path / "network"

    @property
    def stats_dir(self) -> Path:
        return self.path / "stats"

    @property
    def name(self) -> str:
        return self.path.name

    def read_record(self) -> dict[str, Any]:
        try:
            return json.loads((self.path / RECORD).read_text())
        except FileNotFoundError:
            return {"runs": []}
        except ValueError as exc:
            raise ValueError(f"{self.path / RECORD} is not valid JSON: {exc}") from exc

    def record_run(self, pipeline: str, configs: dict[str, Any], **details: Any) -> None:
        """Append a run to ``session.json`` and rewrite ``info.txt`` from it."""
        from dpx import __version__
        from dpx.plugins import get_plugins

        record = self.read_record()
        record.setdefault("runs", []).append(
            {
                "pipeline": pipeline,
                "started": datetime.datetime.now().isoformat(timespec="seconds"),
                "dpx": __version__,
                "python": platform.python_version(),
                "plugins": {
                    info.name: info.version for info in get_plugins().plugins.values() if info.status == "ok"
                },
                "configs": configs,
                **details,
            }
        )
        self._write_json(RECORD, record)
        self._write_info(record)

    def finish_run(self, outcome: str, **details: Any) -> None:
        """Write how the last recorded run ended (``completed``, ``interrupted``, ``failed: ...``) and its counts."""
        record = self.read_record()
        if not record.get("runs"):
            return
        record["runs"][-1].update(outcome=outcome, **details)
        try:
            self._write_json(RECORD, record)
            self._write_info(record)
        except OSError as exc:
            if outcome == "completed":
                raise
            # the run already failed (a full disk, say): its own error is the one to report
            log.info("dpx: could not record how the run ended in %s: %s", self.path / RECORD, exc)

    def last_run(self, pipeline: str) -> dict[str, Any] | None:
        runs = [run for run in self.read_record().get("runs", []) if run["pipeline"] == pipeline]
        return runs[-1] if runs else None

    def last_producing_run(self, mode: str | None = None) -> dict[str, Any] | None:
        """The last run that added samples (of ``mode``, or of any mode) to this session's dataset."""
        runs = [
            run for run in self.read_record().get("runs", [])
            if run["pipeline"] in PRODUCING and (run.get("configs") or {}).get("environment")
            and mode in (None, run.get("mode", "training"))
        ]
        return runs[-1] if runs else None

    def resume_hint(self, pipeline: str) -> str:
        """How to continue this session, on the command line and in Python."""
        return (f"resume with pipeline.session_name={self.name!r} pipeline.new_session=false on the command line, "
                f"or {pipeline}(..., session_name={self.name!r}, new_session=False) in Python")

    def _write_json(self, name: str, data: Any) -> None:
        self._write_text(name, json.dumps(data, indent=2, default=str))

    def _write_text(self, name: str, text: str) -> None:
        """Replace ``name`` atomically: a full disk leaves the old file whole and no temporary behind."""
        tmp = self.path / (name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path / name)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def _write_info(self, record: dict[str, Any]) -> None:
        lines = [f"dpx session {self.name}", ""]
        for number, run in enumerate(record["runs"], 1):
            lines.append(f"Run {number}: {run['pipeline']} started {run['started']} (dpx {run['dpx']})")
            for key, value in run.items():
                if key not in ("pipeline", "started", "dpx", "configs", "plugins"):
                    lines.append(f"  {key}: {value}")
            for section, config in run["configs"].items():
                if config is None:
                    continue
                lines.append(f"  [{section}]")
                lines.extend(f"    {key} = {value!r}" for key, value in config.items())
            lines.append("  plugins: " + ", ".join(f"{n} {v}" for n, v in run["plugins"].items()))
            lines.append("")
        self._write_text("info.txt", "\n".join(lines))


def existing_dataset(existing_dir: str | os.PathLike) -> Path:
    """The dataset folder ``DatabaseConfig.existing_dir`` names (a session or its ``dataset/``), checked."""
    path = Path(existing_dir)
    if not path.is_dir():
        parent = path.parent if path.parent.is_dir() else None
        there = sorted(p.name for p in parent.iterdir() if p.is_dir()) if parent is not None else []
        hint = f"; {parent} holds: {', '.join(there[:20])}" if there else ""
        raise ConfigError(f"DatabaseConfig: existing_dir={str(existing_dir)!r}: no such folder{hint}")
    source = path / "dataset" if (path / "dataset").is_dir() else path
    if not (source / "dataset.json").exists():
        raise ConfigError(
            f"DatabaseConfig: existing_dir={str(existing_dir)!r} holds no dataset (no dataset.json in {source}); "
            "point it at a session made by `python -m dpx generate`"
        )
    return source


def dataset_session(existing_dir: str | os.PathLike) -> Path:
    """The session folder holding the dataset of ``existing_dir``; refused for a dataset outside a session."""
    source = existing_dataset(existing_dir)
    if source.name != "dataset":
        raise ConfigError(
            f"DatabaseConfig: existing_dir={str(existing_dir)!r} is a dataset outside a session; "
            "use new_session=True to copy it into a new session"
        )
    return source.parent
