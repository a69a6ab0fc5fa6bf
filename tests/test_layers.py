"""Library modules don't print; commands do.

What a person reads comes from the command modules (``batcher/commands/``, ``cli.py``); the library
says what happens through :class:`batcher.core.notices.Notices` (or returns lines), so a notebook or
another engine decides where they go.
"""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from batcher.core.notices import QUIET, Notices

PACKAGE = Path(__file__).resolve().parent.parent / "batcher"

#: Modules that are commands, and may write to the terminal.
COMMANDS = frozenset(
    {
        "cli.py",
        # `batcher demo`: a command, written as a module of its own beside its images and job
        "demo.py",
        # `batcher simulate`'s server loop: what it says once it listens is its command's output
        "simulator/server.py",
    }
)
COMMAND_PACKAGES = ("commands/",)

#: Calls that write to the terminal: ``print(...)``, ``click.echo``/``secho``, ``sys.stdout.write``...
_CLICK_WRITERS = frozenset({"echo", "secho"})
_STREAMS = frozenset({"stdout", "stderr", "__stdout__", "__stderr__"})


def _is_command(relative: str) -> bool:
    return relative in COMMANDS or relative.startswith(COMMAND_PACKAGES)


def printing_calls(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` of every call in ``source`` that writes to the terminal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in {"print", *_CLICK_WRITERS}:
            found.append((node.lineno, f"{func.id}("))
        elif isinstance(func, ast.Attribute):
            owner = func.value
            if func.attr in _CLICK_WRITERS and isinstance(owner, ast.Name) and owner.id == "click":
                found.append((node.lineno, f"click.{func.attr}("))
            elif (
                func.attr in {"write", "writelines", "flush"}
                and isinstance(owner, ast.Attribute)
                and owner.attr in _STREAMS
                and isinstance(owner.value, ast.Name)
                and owner.value.id == "sys"
            ):
                found.append((node.lineno, f"sys.{owner.attr}.{func.attr}("))
    return sorted(found)


def library_prints(package: Path) -> list[str]:
    """``module:line: call`` for every terminal write in ``package``'s library modules."""
    out = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if _is_command(relative):
            continue
        for line, what in printing_calls(path.read_text(encoding="utf-8")):
            out.append(f"batcher/{relative}:{line}: {what}")
    return out


def test_library_modules_do_not_print() -> None:
    found = library_prints(PACKAGE)
    assert not found, (
        "library modules print (say it through Notices, or move it to a command):\n" + "\n".join(found)
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("print('x')", [(1, "print(")]),
        ("import sys\nprint('x', file=sys.stderr)", [(2, "print(")]),
        ("import click\nclick.echo('x', err=True)", [(2, "click.echo(")]),
        ("from click import echo\necho('x')", [(2, "echo(")]),
        ("import sys\nsys.stdout.write('x')", [(2, "sys.stdout.write(")]),
        (
            "import sys\nsys.stderr.write('x'); sys.stderr.flush()",
            [(2, "sys.stderr.flush("), (2, "sys.stderr.write(")],
        ),
        # writing to a file, a stream it was given, or a log is not printing
        ("fh.write(b'x')\nstream.write('x')\nlog.info('x')\nself.say('x')", []),
    ],
)
def test_the_scan_finds_each_way_to_print(source: str, expected: list[tuple[int, str]]) -> None:
    assert printing_calls(source) == expected


def test_the_scan_names_the_module_and_line(tmp_path: Path) -> None:
    (tmp_path / "commands").mkdir()
    (tmp_path / "commands" / "status.py").write_text("print('a command may')\n")
    (tmp_path / "quiet.py").write_text("x = 1\n")
    (tmp_path / "loud.py").write_text("x = 1\n\nprint(x)\n")
    assert library_prints(tmp_path) == ["batcher/loud.py:3: print("]


@pytest.mark.anyio
async def test_quiet_notices_drop_everything(capsys: pytest.CaptureFixture[str]) -> None:
    from batcher.core.outcomes import Counters

    quiet: Notices = QUIET
    quiet.say("a line")
    quiet.results("results: here")
    await quiet.watch(Counters(), 3)  # returns at once: nobody watches
    captured = capsys.readouterr()
    assert captured.out == captured.err == ""


def test_stream_notices_write_lines_to_their_streams() -> None:
    from batcher.commands.run import StreamNotices

    err, out = io.StringIO(), io.StringIO()
    notices: Notices = StreamNotices(err, out)
    notices.say("batcher: a line")
    notices.results("results: here")
    assert err.getvalue() == "batcher: a line\n"
    assert out.getvalue() == "results: here\n"
