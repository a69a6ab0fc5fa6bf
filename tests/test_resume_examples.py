"""The request hash (resume.answer_settings) with issue 16's settings: the examples and the
system_file's text shape every row's hash, [cache] does not, and a job without them hashes exactly
as it did before they existed (existing output folders keep their rows under --redo-changed)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from PIL import Image

from batcher.config import parse_job
from batcher.resume import answer_settings

BASE: dict[str, Any] = {
    "input": {"manifest": "m.csv", "prompt": "Describe."},
    "request": {
        "model": "claude-haiku-5-5",
        "max_tokens": 300,
        "system": "Be brief.",
        "stop_sequences": ["END"],
    },
    "images": {"max_edge": 800},
}


def digest(data: dict[str, Any], where: Path) -> str:
    return hashlib.sha256(answer_settings(parse_job(data, where / "j.toml"))).hexdigest()


def test_a_job_without_examples_hashes_as_before_issue_16(tmp_path: Path) -> None:
    # answer_settings of this job at d99310c, before [[request.examples]], system_file and [cache].
    assert digest(BASE, tmp_path) == "38d19b641cc36a42941bcfd8d559459e3d4f7c5609158aaa2f8dc60b67e6fa79"


def test_cache_settings_do_not_shape_the_answer(tmp_path: Path) -> None:
    assert digest({**BASE, "cache": {"mode": "off", "ttl": "1h"}}, tmp_path) == digest(BASE, tmp_path)


def test_the_system_files_text_shapes_the_hash_as_the_same_text_inline_would(tmp_path: Path) -> None:
    (tmp_path / "s.md").write_text("Be brief.")
    from_file = {
        **BASE,
        "request": {**{k: v for k, v in BASE["request"].items() if k != "system"}, "system_file": "s.md"},
    }
    assert digest(from_file, tmp_path) == digest(BASE, tmp_path)
    (tmp_path / "s.md").write_text("Be thorough.")
    assert digest(from_file, tmp_path) != digest(BASE, tmp_path)


def with_example(**example: Any) -> dict[str, Any]:
    return {
        **BASE,
        "request": {**BASE["request"], "examples": [{"image": "a.jpg", "answer": "A.", **example}]},
    }


def test_every_part_of_an_example_shapes_the_hash(tmp_path: Path) -> None:
    Image.new("RGB", (10, 10)).save(tmp_path / "a.jpg")
    first = digest(with_example(), tmp_path)
    assert first != digest(BASE, tmp_path)
    assert digest(with_example(answer="B."), tmp_path) != first
    assert digest(with_example(prompt="Other."), tmp_path) != first
    assert digest(with_example(image="https://example.com/a.jpg"), tmp_path) != first
    st = os.stat(tmp_path / "a.jpg")
    os.utime(tmp_path / "a.jpg", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert digest(with_example(), tmp_path) != first
