"""The README runs as written: its console transcripts and its Python blocks.

Every ```console block's ``$ `` commands run in order, in one temporary
folder (the README's ``/home/me``) holding a copy of ``tests/`` as a checkout
does, with the installed ``nexuslims-db`` and no database configured; the
lines after a command are its expected standard output. In them ``...``
stands for text that differs from one machine or run to the next (a whole
line ``...``: any number of lines), and durations are compared as
``H:MM:SS``. Every ```python block runs in a fresh interpreter. The only
blocks left out are those the README marks as needing a PostgreSQL server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from nexusLIMS.db.claims import claim_sessions

README = Path(__file__).resolve().parent.parent / "README.md"
TESTS = Path(__file__).resolve().parent
HOME = "/home/me"
SKIP_MARK = "<!-- not run by tests/test_readme.py: "
# Durations (2:30:00, 0:29:56, 941 days, 9:14:24), never the time of a timestamp (T09:00:00).
DURATION = re.compile(r"(?<![T\d:])(?:\d+ days?, )?\d+:\d\d:\d\d(?![\d.])")


@dataclass
class Block:
    language: str
    text: str
    line: int
    skip: str  # why it is not run ("" when it is)


def blocks() -> list[Block]:
    """The README's console and python blocks, in order."""
    found = []
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        match = re.fullmatch(r"```(\w+)", lines[index])
        if not match:
            index += 1
            continue
        end = lines.index("```", index + 1)
        previous = lines[index - 1] if index else ""
        skip = previous[len(SKIP_MARK):].rstrip(" ->") if previous.startswith(SKIP_MARK) else ""
        if match.group(1) in ("console", "python"):
            found.append(Block(match.group(1), "\n".join(lines[index + 1:end]), index + 1, skip))
        index = end + 1
    return found


@dataclass
class Command:
    command: str
    expected: list[str]


def commands(block: Block) -> list[Command]:
    """The ``$`` commands of a console block, each with the output shown after it."""
    found: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append(Command(line[2:], []))
        elif found:
            found[-1].expected.append(line)
    return found


def _pattern(expected: list[str]) -> re.Pattern[str]:
    parts = []
    for line in expected:
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(re.escape(line).replace(r"\.\.\.", r"[^\n]*") + r"\n")
    return re.compile("".join(parts))


def _normal(text: str) -> str:
    return "\n".join(DURATION.sub("H:MM:SS", line).rstrip() for line in text.splitlines()) + "\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's working folder: a checkout's ``tests/``, nothing else."""
    folder = tmp_path_factory.mktemp("home")
    shutil.copytree(TESTS, folder / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture(scope="module")
def env(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a new shell: this interpreter's scripts first, no database set."""
    env = {key: value for key, value in os.environ.items()
           if not key.lower().startswith("nexuslims_") and key not in ("NX_DB_PATH",)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))
    return env


BLOCKS = blocks()


def test_the_readme_has_the_blocks_this_test_runs() -> None:
    kinds = [block.language for block in BLOCKS if not block.skip]
    assert kinds.count("console") >= 4
    assert kinds.count("python") >= 3
    # Only blocks that need a server may be left out, and the README says so.
    for block in BLOCKS:
        if block.skip:
            assert "PostgreSQL server" in block.skip, block
            assert "postgresql://" in block.text, block


def _setup(command: str, home: Path) -> None:
    """What the README describes in words before a transcript: a builder holding a claim."""
    if command.endswith("--db demo.sqlite claims"):
        claim_sessions(limit=1, worker="builder-1", lease=timedelta(minutes=30),
                       database=home / "demo.sqlite")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="the README's transcripts are POSIX shell")
def test_the_readme_runs_as_written(home: Path, env: dict[str, str]) -> None:
    ran = 0
    for block in BLOCKS:
        if block.skip:
            continue
        if block.language == "python":
            result = subprocess.run([sys.executable, "-W", "error", "-c", block.text],
                                    cwd=home, env=env,
                                    capture_output=True, text=True, timeout=300, check=False)
            assert result.returncode == 0, f"README line {block.line}:\n{result.stderr}"
            ran += 1
            continue
        for command in commands(block):
            _setup(command.command, home)
            result = subprocess.run(command.command, shell=True, cwd=home, env=env,
                                    capture_output=True, text=True, timeout=300, check=False)
            where = f"README line {block.line}: $ {command.command}"
            assert result.returncode == 0, f"{where}\n{result.stdout}{result.stderr}"
            ran += 1
            if not command.expected:
                continue
            actual = _normal(result.stdout.replace(str(home), HOME))
            expected = _normal("\n".join(command.expected)).splitlines()
            assert _pattern(expected).fullmatch(actual), (
                f"{where}\nexpected:\n" + "\n".join(expected) + f"\nactual:\n{actual}")
    assert ran >= 15
    # The Python quickstart cleans up after itself.
    assert list(Path(env["TMPDIR"]).iterdir()) == []


def test_the_quickstart_prints_its_session(home: Path, env: dict[str, str]) -> None:
    quickstart = next(b for b in BLOCKS if b.language == "python" and "init_db()" in b.text)
    comment = re.search(r"print\(session\)  # (.+)", quickstart.text)
    assert comment is not None
    result = subprocess.run([sys.executable, "-W", "error", "-c", quickstart.text], cwd=home,
                            env=env,
                            capture_output=True, text=True, timeout=300, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == comment.group(1) + "\n"
    assert list(Path(env["TMPDIR"]).iterdir()) == []


def test_the_pattern_reads_dots_as_anything() -> None:
    assert _pattern(["a ... b", "...", "c"]).fullmatch("a x y b\nz\nw\nc\n")
    assert _pattern(["a ... b", "...", "c"]).fullmatch("a  b\nc\n")
    assert not _pattern(["a ... b"]).fullmatch("a x\nb\n")
    assert _normal("x 2:30:00 (941 days, 9:14:24 ago) 2024-05-06T09:00:00-04:00 ") == (
        "x H:MM:SS (H:MM:SS ago) 2024-05-06T09:00:00-04:00\n")
