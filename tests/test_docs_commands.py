"""Every command line in README.md and docs/*.md runs as written.

Commands are taken from fenced code blocks and inline code spans. Synopses (with `[…]`
optional groups or `...`) are not commands and are left out. `groundstation` and
`groundstation-sim` command lines go through the real argument parsers (parse only);
other `python -m MODULE` lines must name an importable module whose --help lists every
option used; `pytest` lines must collect at least one test.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from groundstation.simulators import cli as simulator_cli

from groundstation.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("groundstation", "groundstation-sim", "python", "python3", "pytest")
SYNOPSIS = re.compile(r"\s\[|\.\.\.|…|\\\|")
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SPAN = re.compile(r"`([^`\n]+(?:\n[^`\n]+)?)`")


def documented_commands() -> list[tuple[str, str]]:
    """(file name, command line) for every command in the docs."""
    found: list[tuple[str, str]] = []
    for path in DOCS:
        text = path.read_text()
        blocks = FENCE.findall(text)
        lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
        # In prose, `groundstation replay` names a command; a command line has arguments.
        spans = [span for span in SPAN.findall(FENCE.sub("", text)) if len(span.split()) > 2]
        for piece in lines + spans:
            command = " ".join(piece.split())
            command = re.split(r" \| | && | \(or ", command)[0].rstrip(")")
            if SYNOPSIS.search(command):
                continue
            words = _words(command)
            if words and Path(words[0]).name in PROGRAMS and len(words) > 1:
                found.append((path.name, command))
    return sorted(set(found))


def _words(command: str) -> list[str]:
    """The command's words, comments and leading VAR=value assignments dropped."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return []
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    return words


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind() -> None:
    """The extraction finds the commands the docs are known to give (guards the regexes)."""
    programs = {Path(_words(command)[0]).name for _, command in COMMANDS}
    assert {"groundstation", "groundstation-sim", "pytest", "python"} <= programs
    assert len(COMMANDS) >= 20


@pytest.mark.parametrize(("doc", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_documented_command_runs_as_written(doc: str, command: str) -> None:
    """The parsers accept it; pytest selections select something; modules exist."""
    words = _words(command)
    program, arguments = Path(words[0]).name, words[1:]
    if program in ("python", "python3") and arguments[0].endswith(".py"):
        script = ROOT / arguments[0]
        assert script.is_file(), f"{doc}: {command}: no such script"
        module = ".".join(script.relative_to(ROOT).with_suffix("").parts)
        program, arguments = module, arguments[1:]
    elif program in ("python", "python3"):
        assert arguments[0] == "-m", f"{doc}: {command}"
        module, arguments = arguments[1], arguments[2:]
        program = {"groundstation": "groundstation", "pytest": "pytest"}.get(module, module)
    try:
        if program == "groundstation":
            build_parser().parse_args(arguments)
        elif program == "groundstation-sim":
            simulator_cli.options_from_args(simulator_cli.build_parser().parse_args(arguments))
        elif program == "pytest":
            kept = [word for word in arguments if word != "-s"]  # output capture: no matter
            assert collected(tuple(expand_globs(kept))) > 0, f"{doc}: {command} selects no test"
        else:
            check_module(doc, command, program, arguments)
    except SystemExit as error:
        if error.code == 0:  # --help
            return
        pytest.fail(f"{doc}: {command!r} is refused by its parser (exit {error.code})")


def check_module(doc: str, command: str, module: str, arguments: list[str]) -> None:
    """`python -m MODULE`: importable, and --help names every option the docs use."""
    if module.startswith("tests.fuzz.fuzz_") and importlib.util.find_spec("atheris") is None:
        return  # needs the fuzz extra (pip install -e '.[fuzz]', as the docs say first)
    assert importlib.util.find_spec(module) is not None, f"{doc}: {command}: no module {module}"
    help_text = module_help(module)
    for option in (word.split("=")[0] for word in arguments if word.startswith("--")):
        assert option in help_text, f"{doc}: {command}: {module} has no option {option}"


@cache
def module_help(module: str) -> str:
    run = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout


@cache
def collected(arguments: tuple[str, ...]) -> int:
    """How many tests `pytest ARGS` would run (collection only)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         *arguments],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=120,
    )  # fmt: skip
    if run.returncode not in (0, 5):  # 5: nothing collected
        pytest.fail(run.stdout[-2000:] + run.stderr[-2000:])
    return sum(1 for line in run.stdout.splitlines() if "::" in line)


def expand_globs(words: list[str]) -> list[str]:
    """What the shell makes of `tests/test_reliability*.py`."""
    expanded: list[str] = []
    for word in words:
        matches = sorted(ROOT.glob(word)) if "*" in word else []
        expanded += [str(match.relative_to(ROOT)) for match in matches] or [word]
    return expanded
