"""Issue 13, defect 8: a key holding a newline or a non-ASCII character is refused before use, in
one line that names the problem and never shows the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from batcher.api.client import Client, InvalidKeyError, MissingKeyError, settings_from_env
from tests.helpers import batcher, good_rows, messages_sent, write_job

SECRET = "sk-ant-api03-SECRETSECRET"


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (SECRET + "\nXYZ", "contains a newline (character 26)"),
        (SECRET + "\r\nXYZ", "contains a carriage return (character 26)"),
        (SECRET + " XYZ", "contains a space (character 26)"),
        (SECRET + "\tXYZ", "contains a tab (character 26)"),
        (SECRET + "é", "contains a non-ASCII character (U+00E9) (character 26)"),
        (SECRET + "\u2028x", "contains a whitespace character (U+2028) (character 26)"),
        (SECRET + "\x07", "contains a control character (U+0007) (character 26)"),
        ("  " + SECRET + "\nXYZ", "contains a newline (character 28)"),  # counted in the value as set
    ],
)
def test_a_bad_key_is_named_by_its_problem_never_shown(key: str, said: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        settings_from_env({"ANTHROPIC_API_KEY": key})
    message = str(info.value)
    assert message.startswith(f"ANTHROPIC_API_KEY {said}"), message
    assert "SECRET" not in message and "\n" not in message
    assert isinstance(info.value, MissingKeyError) and info.value.fatal  # handled where no key is


def test_a_key_with_a_trailing_newline_is_fine() -> None:
    # `export ANTHROPIC_API_KEY=$(cat key.txt)` and the like: whitespace at the ends is not the key's
    assert settings_from_env({"ANTHROPIC_API_KEY": SECRET + "\n"})[0] == SECRET


def test_the_client_checks_a_key_given_to_it_directly() -> None:
    with pytest.raises(InvalidKeyError, match=r"the API key contains a newline \(character 4\)"):
        Client("abc\ndef")


@pytest.mark.parametrize("key", [SECRET + "\nXYZ", SECRET + "é"])
def test_batcher_run_refuses_the_key_in_one_line_without_it(tmp_path: Path, simulator, key: str) -> None:  # type: ignore[no-untyped-def]
    # Before: "Illegal header value b'sk-...'" with the whole key, or a UnicodeEncodeError traceback.
    job = write_job(tmp_path, good_rows(tmp_path, 1))
    done = batcher(job, simulator, key=key)
    assert done.returncode == 1, done.stderr
    assert "SECRET" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if "ANTHROPIC_API_KEY" in line]
    assert len(lines) == 1 and "(character 26)" in lines[0], done.stderr
    assert messages_sent(simulator) == 0
