"""`batcher prepare`: every input reported in order, bad files typed, outputs named without clobbering."""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner
from PIL import Image

from batcher.cli import main
from batcher.images.command import output_stems
from tests.images import builders


def run(*args: str) -> tuple[int, list[dict]]:
    result = CliRunner().invoke(main, ["prepare", "--json", "--workers", "2", *args])
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, rows


def test_reports_every_input_in_order_and_exits_3_on_failures(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(builders.encode(builders.photo((2000, 1500)), "JPEG"))
    (tmp_path / "b.png").write_text("not an image")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.gif").write_bytes(builders.encode(builders.photo((120, 90)), "GIF"))
    code, rows = run(str(tmp_path), str(tmp_path / "missing.webp"))
    assert code == 3
    assert [Path(r["path"]).name for r in rows] == ["a.jpg", "b.png", "c.gif", "missing.webp"]
    a, b, c, missing = rows
    assert a["ok"] and (a["width"], a["height"], a["tokens"]) == (1270, 952, 1564)
    assert a["media_type"] == "image/jpeg" and a["bytes"] > 0 and a["warnings"] == []
    assert not b["ok"] and b["error_type"] == "not_an_image" and "b.png" in b["error"]
    assert c["ok"] and c["warnings"] == ["small_image"] and c["passthrough"]
    assert missing["error_type"] == "not_found"


def test_all_ok_exits_0_and_caps_apply(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(builders.encode(builders.photo((3840, 2160)), "JPEG"))
    code, rows = run("--model", "claude-opus-4-8", "--max-edge", "1000", str(tmp_path / "a.jpg"))
    assert code == 0 and (rows[0]["width"], rows[0]["height"]) == (1000, 562)


def test_out_writes_files_with_matching_extensions_and_distinct_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    (src / "photo.jpg").write_bytes(builders.encode(builders.photo((800, 600)), "JPEG"))
    (src / "photo.png").write_bytes(builders.encode(builders.quadrants((300, 200)), "PNG"))
    (src / "x" / "photo.tif").write_bytes(builders.encode(builders.photo((300, 200)), "TIFF"))
    out = tmp_path / "out"
    code, rows = run("--out", str(out), str(src))
    assert code == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["photo-2.png", "photo-3.jpg", "photo.jpg"]
    for row in rows:
        data = Path(row["out"]).read_bytes()
        assert len(data) == row["bytes"]
        assert Image.open(io.BytesIO(data)).format.lower() in row["media_type"]


def test_output_stems_are_stable_and_distinct() -> None:
    paths = [Path("a/x.jpg"), Path("b/x.png"), Path("x-2.gif"), Path("c/x.webp")]
    assert output_stems(paths) == ["x", "x-2", "x-2-2", "x-3"]


def test_unknown_model_and_bad_options_exit_2(tmp_path: Path) -> None:
    assert run("--model", "claude-nope", str(tmp_path))[0] == 2
    assert run("--max-edge", "0", str(tmp_path))[0] == 2


def test_human_output(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(builders.encode(builders.photo((300, 200)), "JPEG"))
    result = CliRunner().invoke(main, ["prepare", str(tmp_path / "a.jpg"), str(tmp_path / "zz.jpg")])
    assert result.exit_code == 3
    assert "ok   " in result.stdout and "FAIL " in result.stdout and "not_found" in result.stdout
