"""`python -m dpx generate` and `info`, run as a user would, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def dpx_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpx", *args], capture_output=True, text=True, cwd=cwd, check=False)


def test_generate_then_info(tmp_path):
    config = str(EXAMPLES / "spring_generate.toml")
    result = dpx_cli("generate", config, "pipeline.batch_nb=5", "environment.env_kwargs.dt=0.02", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "320 training samples" in result.stdout and "sessions/spring" in result.stdout
    info = dpx_cli("info", "sessions/spring", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert "training: 320 samples" in info.stdout
    assert "input            float32  (5,)  mean [" in info.stdout
    described = json.loads(dpx_cli("info", "sessions/spring", "--json", cwd=tmp_path).stdout)
    assert described["dataset"]["training"]["fields"]["ground_truth"]["shape"] == [1]
    assert len(described["dataset"]["training"]["fields"]["input"]["std"]) == 5
    record = json.loads((tmp_path / "sessions/spring/session.json").read_text())
    assert record["runs"][0]["configs"]["environment"]["env_kwargs"] == {"dt": 0.02}
    # resume: a larger batch_nb on the same session appends only what is missing
    again = dpx_cli("generate", config, "pipeline.batch_nb=6", "pipeline.new_session=false",
                    "environment.env_kwargs.dt=0.02", cwd=tmp_path)
    assert "64 training samples" in again.stdout and "holds 384" in again.stdout


def test_config_errors_exit_2_with_the_culprit(tmp_path):
    config = str(EXAMPLES / "spring_generate.toml")
    cases = {
        ("database.normalise=true",): "[database]: unknown parameter 'normalise'; did you mean 'normalize'?",
        ("environment.workers='two'",): "workers='two' is a str, expected int",
        ("environment.environment_class='toy.sprng'",): "unknown environment 'toy.sprng' (did you mean 'toy.spring'?)",
        ("--runner", "threads"): "unknown runner 'threads'",
    }
    for args, message in cases.items():
        result = dpx_cli("generate", config, *args, cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text("[enviroment]\nenvironment_class = 'toy.mean'\n")
    result = dpx_cli("generate", str(bad), cwd=tmp_path)
    assert result.returncode == 2 and "unknown section [enviroment]; did you mean [environment]?" in result.stderr
    assert not (tmp_path / "sessions").exists(), "a bad config must not create a session"


def test_dry_run_checks_without_running(tmp_path):
    result = dpx_cli("generate", str(EXAMPLES / "spring_generate.toml"), "--dry-run", cwd=tmp_path)
    assert result.returncode == 0 and "config OK: environment toy.spring -> dpx_toy.spring.Spring" in result.stdout
    assert not (tmp_path / "sessions").exists()


def test_info_on_a_missing_session(tmp_path):
    result = dpx_cli("info", "nowhere", cwd=tmp_path)
    assert result.returncode == 2 and "no session at nowhere" in result.stderr


def test_help_describes_the_commands(tmp_path):
    result = dpx_cli("generate", "--help", cwd=tmp_path)
    assert "[environment] (EnvironmentConfig)" in result.stdout and "--seed" in result.stdout


def test_import_without_the_plugin_says_what_to_install(monkeypatch, capsys):
    import dpx.cli
    import dpx.plugins

    monkeypatch.setattr(dpx.plugins, "_plugins", dpx.plugins.Plugins(entry_points=False))
    assert dpx.cli.main(["import", "deepphysx", "somewhere"]) == 2
    assert capsys.readouterr().err == (
        "dpx import: error: unknown importer 'deepphysx'; available: none. "
        "Importer 'deepphysx' comes with the dpx-deepphysx plugin: pip install dpx-deepphysx.\n"
    )


TOOL_IMPORTER = """
import dpx
from pathlib import Path


class ToolImporter:
    def import_session(self, path, out=None, dataset=None):
        out = Path(out or "sessions/tool")
        out.mkdir(parents=True)
        (out / "source.txt").write_text(Path(path, "run.txt").read_text())
        return f"imported {path} into {out} (dataset: {dataset})"


@dpx.hookimpl
def dpx_importers():
    return {"tool": dpx.Component("tool_importer:ToolImporter", "sessions of a made-up tool")}
"""


def test_a_third_party_importer_is_reachable_from_dpx_import(tmp_path, monkeypatch, dpx_plugin, capsys):
    import dpx.cli

    module = types.ModuleType("tool_importer")
    exec(TOOL_IMPORTER, module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    dpx_plugin(module, name="tool")
    (tmp_path / "made_by_tool").mkdir()
    (tmp_path / "made_by_tool" / "run.txt").write_text("42 steps")
    out = tmp_path / "converted"
    assert dpx.cli.main(["import", "tool", str(tmp_path / "made_by_tool"), "--out", str(out), "--dataset", "d"]) == 0
    assert capsys.readouterr().out == f"imported {tmp_path / 'made_by_tool'} into {out} (dataset: d)\n"
    assert (out / "source.txt").read_text() == "42 steps"
    assert dpx.cli.main(["plugins"]) == 0
    assert "importers: tool" in capsys.readouterr().out
    assert dpx.cli.main(["import", "tol", "somewhere"]) == 2
    assert "unknown importer 'tol' (did you mean 'tool'?)" in capsys.readouterr().err
