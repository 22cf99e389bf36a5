"""Every code block of the README files runs or is checked, so the docs cannot drift from the code.

Rules, by the block's language:

* ``python``: run as a script in a fresh folder (the blocks of one file in
  order, in the same folder, so a later block may read what an earlier one
  wrote, and use what an earlier one imported). A block whose first line is ``# path/to/file.py`` is an excerpt of
  that file: each of its lines (``...`` marks left-out lines) must appear in
  the file, in order. A block preceded by ``<!-- docs-test: compile (reason) -->``
  needs something this machine lacks (a Ray cluster, a SOFA build): it is
  compiled and every module it imports must exist.
* ``bash``/``sh``: each command is checked: ``python -m dpx ...`` parses with
  dpx's own parser, and jobs are resolved with ``--dry-run``; ``python -m
  MODULE`` names an importable module; scripts, test folders and local
  ``pip install`` paths exist. Commands about other tools (``export``,
  ``conda``) are left alone.
* ``console``: each ``$ python -m dpx ...`` command is run and every output
  line shown (``...`` marks left-out lines) must appear in its real output, in
  order (spaces aside: column widths follow what is installed).
* ``toml``: parsed.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpx.cli import _parse, _parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "examples" / "README.md", ROOT / "examples" / "dpx-pendulum" / "README.md",
        *sorted((ROOT / "plugins").glob("*/README.md"))]
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\s*$")
COMPILE_ONLY = re.compile(r"<!-- docs-test: compile \((?P<reason>[^)]+)\) -->")
JOBS = ("generate", "train", "predict")


@dataclass
class Block:
    doc: Path
    line: int
    lang: str
    code: str
    compile_only: bool

    def __str__(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def blocks(doc: Path) -> list[Block]:
    found, lines = [], doc.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        start, indent = index, len(match["indent"])
        index += 1
        body = []
        while not FENCE.match(lines[index]):
            body.append(lines[index][indent:])
            index += 1
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        found.append(Block(doc, start + 1, match["lang"], "\n".join(body) + "\n", bool(COMPILE_ONLY.search(previous))))
        index += 1
    return found


ALL = [block for doc in DOCS for block in blocks(doc)]


def of(*langs: str) -> list[Block]:
    return [pytest.param(block, id=str(block)) for block in ALL if block.lang in langs]


def test_every_block_has_a_known_language():
    assert {block.lang for block in ALL} <= {"python", "bash", "sh", "console", "toml", ""}


# -- python ------------------------------------------------------------------------------

EXCERPT = re.compile(r"^# (?P<path>[\w./-]+\.py)\b")


def excerpt_source(block: Block) -> Path | None:
    match = EXCERPT.match(block.code)
    if not match:
        return None
    candidates = [path for path in ROOT.rglob(match["path"]) if ".venv" not in path.parts]
    return candidates[0] if len(candidates) == 1 else None


def imported_modules(code: str) -> list[tuple[str, str | None]]:
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found += [(node.module, alias.name) for alias in node.names]
    return found


def imports(code: str) -> str:
    """The top-level import statements of ``code``, one a line."""
    return "".join(ast.unparse(node) + "\n" for node in ast.parse(code).body if isinstance(node, (ast.Import, ast.ImportFrom)))


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory) -> dict[Path, Path]:
    """One folder per document: its python blocks run there in order."""
    return {doc: tmp_path_factory.mktemp(doc.parent.name) for doc in DOCS}


@pytest.mark.parametrize("block", of("python"))
def test_python_block(block: Block, workdirs):
    source = excerpt_source(block)
    if source is not None:
        lines = [line.strip() for line in source.read_text().splitlines()]
        position = 0
        for wanted in block.code.splitlines()[1:]:
            if wanted.strip() in ("", "..."):
                continue
            assert wanted.strip() in lines[position:], f"{block}: {wanted.strip()!r} is not in {source.relative_to(ROOT)}"
            position = lines.index(wanted.strip(), position) + 1
        return
    if block.compile_only:
        for module, name in imported_modules(block.code):
            assert importlib.util.find_spec(module) is not None, f"{block}: no module {module}"
            if name is not None and not hasattr(importlib.import_module(module), name):  # a class, or a submodule
                assert importlib.util.find_spec(f"{module}.{name}") is not None, f"{block}: {module} has no {name}"
        return
    earlier = [b for b in ALL if b.doc == block.doc and b.lang == "python" and b.line < block.line
               and not b.compile_only and excerpt_source(b) is None]
    script = workdirs[block.doc] / f"block_{block.line}.py"
    script.write_text("".join(imports(b.code) for b in earlier) + block.code)
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPX_")}
    result = subprocess.run([sys.executable, script.name], cwd=script.parent, capture_output=True, text=True,
                            env=env, check=False, timeout=600)
    assert result.returncode == 0, f"{block} failed:\n{result.stderr[-3000:]}"


def test_compile_only_blocks_say_why():
    for doc in DOCS:
        for match in re.finditer(r"<!-- docs-test:[^>]*-->", doc.read_text()):
            assert COMPILE_ONLY.fullmatch(match.group()), f"{doc}: {match.group()} is not '<!-- docs-test: compile (reason) -->'"


# -- shell -------------------------------------------------------------------------------

def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, synopsis ``[...]`` removed."""
    joined = code.replace("\\\n", " ")
    found = []
    for line in joined.splitlines():
        words = shlex.split(re.sub(r"\s\[[^\]'\"]*\]", "", line), comments=True)
        if words:
            found.append(words)
    return found


def python_module(words: list[str]) -> tuple[str, list[str]] | None:
    """``MODULE, ARGS`` of ``python -m MODULE ARGS`` (any python), or None."""
    if words and Path(words[0]).name.startswith("python") and len(words) > 2 and words[1] == "-m":
        return words[2], words[3:]
    return None


def check_dpx_command(block: Block, args: list[str], cwd: Path, monkeypatch) -> None:
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as exited:
            _parser().parse_args(args)
        assert exited.value.code == 0, f"{block}: dpx {' '.join(args)}"
        return
    parsed = _parse(_parser(), args)  # exits (fails the test) on an unknown option or command
    if parsed.command in JOBS:
        assert (ROOT / parsed.config).exists(), f"{block}: {parsed.config} does not exist"
        monkeypatch.chdir(cwd)
        assert main([*args, "--dry-run"] if "--dry-run" not in args else args) == 0, f"{block}: dpx {' '.join(args)}"
        monkeypatch.chdir(ROOT)


@pytest.fixture(scope="module")
def example_sessions(tmp_path_factory) -> Path:
    """A folder holding small real runs of the example jobs, so a documented job's ``--dry-run``
    checks what a real run would (the dataset it trains on, the network it predicts with)."""
    folder = tmp_path_factory.mktemp("examples-run")
    (folder / "examples").symlink_to(ROOT / "examples")
    previous = Path.cwd()
    os.chdir(folder)
    try:
        for job in (["generate", "examples/spring_generate.toml", "pipeline.batch_nb=4"],
                    ["generate", "examples/spring_generate.toml", "pipeline.batch_nb=1", 'database.mode="validation"'],
                    ["train", "examples/spring_train.toml", "pipeline.epoch_nb=1"]):
            assert main([*job, "--no-progress"]) == 0, job
    finally:
        os.chdir(previous)
    return folder


@pytest.mark.parametrize("block", of("bash", "sh"))
def test_shell_block(block: Block, tmp_path, monkeypatch, example_sessions):
    monkeypatch.chdir(ROOT)
    for key in [key for key in os.environ if key.startswith("DPX_")]:
        monkeypatch.delenv(key)
    tmp_path.rmdir()  # jobs read their configs from examples/ and find the example sessions, written in tmp_path
    shutil.copytree(example_sessions, tmp_path, symlinks=True)
    for words in commands(block.code):
        module = python_module(words)
        if module is not None:
            name, args = module
            assert importlib.util.find_spec(name) is not None, f"{block}: no module {name}"
            if name == "dpx":
                check_dpx_command(block, args, tmp_path, monkeypatch)
            elif name == "pytest":
                assert all((ROOT / arg).exists() for arg in args if not arg.startswith("-")), f"{block}: {words}"
        elif words[0] == "bash" or Path(words[0]).name.startswith("python") and not words[1].startswith("-"):
            assert (ROOT / words[1]).is_file(), f"{block}: {words[1]} does not exist"
        elif words[:2] == ["pip", "install"]:
            local = [w for w in words[2:] if not w.startswith("-") and ("/" in w or w == ".") and "://" not in w]
            assert all((ROOT / path).is_dir() for path in local), f"{block}: {local}"
        elif words[0] == "dpx":
            assert (Path(sys.executable).parent / "dpx").is_file(), "the dpx command is not installed"
            check_dpx_command(block, words[1:], tmp_path, monkeypatch)


# -- console -----------------------------------------------------------------------------

@pytest.mark.parametrize("block", of("console"))
def test_console_block(block: Block):
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPX_")}
    sessions = block.code.split("$ ")[1:]
    assert sessions, f"{block}: a console block shows '$ command' then its output"
    for session in sessions:
        command, *shown = session.splitlines()
        module = python_module(shlex.split(command))
        assert module is not None and module[0] == "dpx", f"{block}: only `python -m dpx ...` is run: {command}"
        result = subprocess.run([sys.executable, "-m", "dpx", *module[1]], capture_output=True, text=True,
                                env=env, cwd=ROOT, check=True)
        real = [" ".join(line.split()) for line in result.stdout.splitlines()]  # column widths vary
        position = 0
        for line in shown:
            if line.strip() in ("", "..."):
                continue
            wanted = " ".join(line.split())
            assert wanted in real[position:], f"{block}: {line!r} is not in the output of {command}:\n{result.stdout}"
            position = real.index(wanted, position) + 1


# -- toml --------------------------------------------------------------------------------

@pytest.mark.parametrize("block", of("toml"))
def test_toml_block(block: Block):
    tomllib.loads(block.code)
