"""Repository-wide checks: lint clean, formatted, typed, and a CLI that starts light."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import REPO


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    ruff = shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    return subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_is_clean() -> None:
    result = _ruff("check", "batcher", "tests", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_tree_is_ruff_formatted() -> None:
    result = _ruff("format", "--check", "batcher", "tests", "scripts")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    # The settings (strict, the package as its files) are pyproject.toml's [tool.mypy]: run from
    # the repository root with no arguments, mypy checks what CI and a developer would.
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys; from click.testing import CliRunner; from batcher.cli import main;"
        "r = CliRunner().invoke(main, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('PIL', 'pyarrow', 'httpx', 'uvicorn', 'starlette', 'jsonschema', 'jinja2',"
        " 'fsspec', 's3fs', 'gcsfs', 'adlfs', 'botocore', 'aiobotocore', 'ray')"
        " if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
