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
import os
import platform
from pathlib import Path
from typing import Any

from dpx.core.storage import copy_dataset

SUBFOLDERS = ("dataset", "network", "stats")
RECORD = "session.json"


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
        if not session_name or os.sep in session_name:
            raise ValueError(f"session_name={session_name!r} must be a plain folder name")
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
        source = Path(existing_dir)
        source = source / "dataset" if (source / "dataset").is_dir() else source
        if not (source / "dataset.json").exists():
            raise FileNotFoundError(f"DatabaseConfig: existing_dir={existing_dir!r} holds no dataset (no dataset.json)")
        if not new_session:
            if source.name != "dataset":
                raise FileNotFoundError(
                    f"existing_dir={existing_dir!r} is a dataset outside a session; "
                    "use new_session=True to copy it into a new session"
                )
            session = cls(source.parent)
            for sub in SUBFOLDERS:
                (session.path / sub).mkdir(parents=True, exist_ok=True)
            return session
        session = cls.start(session_dir, session_name, True)
        copy_dataset(source, session.dataset_dir)
        return session

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

    def last_run(self, pipeline: str) -> dict[str, Any] | None:
        runs = [run for run in self.read_record().get("runs", []) if run["pipeline"] == pipeline]
        return runs[-1] if runs else None

    def _write_json(self, name: str, data: Any) -> None:
        tmp = self.path / (name + ".tmp")
        try:
            tmp.write_text(json.dumps(data, indent=2, default=str))
            os.replace(tmp, self.path / name)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk must not leave an empty file behind
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
        (self.path / "info.txt").write_text("\n".join(lines))
