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


def test_an_output_that_cannot_be_written_is_that_inputs_error_and_the_rest_go_on(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(builders.encode(builders.photo((400, 300)), "JPEG"))
    out = tmp_path / "out"
    (out / "a.jpg").mkdir(parents=True)  # a folder where a.jpg's output goes
    code, rows = run("--out", str(out), str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"))
    assert code == 3
    a, b = rows
    assert not a["ok"] and a["error_type"] == "io_error" and "prepared, but cannot write" in a["error"]
    assert b["ok"] and Path(b["out"]).read_bytes()[:2] == b"\xff\xd8"


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


def write_job(tmp_path: Path, images: str = "", model: str = "claude-opus-4-8") -> Path:
    job = tmp_path / "job.toml"
    job.write_text(
        f'[input]\nmanifest = "m.csv"\nprompt = "Describe"\n\n'
        f'[request]\nmodel = "{model}"\nmax_tokens = 100\n\n[images]\n{images}\n'
    )
    return job


def big_photo(tmp_path: Path) -> Path:
    path = tmp_path / "big.jpg"
    path.write_bytes(builders.encode(builders.photo((3840, 2160)), "JPEG"))
    return path


def test_job_gives_the_model_and_its_image_caps(tmp_path: Path) -> None:
    job = write_job(tmp_path, "max_image_tokens = 400")
    code, rows = run("--job", str(job), str(big_photo(tmp_path)))
    # Opus 4.8's native size for this photo is 2576x1449; the job's 400-token cap gives 728x409.
    assert code == 0 and (rows[0]["width"], rows[0]["height"], rows[0]["tokens"]) == (728, 409, 390)


def test_flags_override_the_job(tmp_path: Path) -> None:
    job = write_job(tmp_path, "max_image_tokens = 400\nmax_edge = 300")
    photo = big_photo(tmp_path)
    code, rows = run("--job", str(job), "--max-image-tokens", "1000", "--max-edge", "2576", str(photo))
    assert code == 0 and (rows[0]["width"], rows[0]["height"], rows[0]["tokens"]) == (1148, 645, 984)
    # --model replaces the job's model (Haiku: 1456x819 natively), the job's other caps still apply.
    code, rows = run("--job", str(job), "--model", "claude-haiku-5-5", "--max-edge", "1000", str(photo))
    assert code == 0 and (rows[0]["width"], rows[0]["height"]) == (728, 409)


def test_job_allow_truncated_holds_unless_overridden(tmp_path: Path) -> None:
    data = builders.encode(builders.photo((800, 600)), "JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    job = write_job(tmp_path, "allow_truncated = true")
    assert run("--job", str(job), str(cut))[1][0]["ok"]
    code, rows = run("--job", str(job), "--no-allow-truncated", str(cut))
    assert code == 3 and rows[0]["error_type"] == "truncated"


def test_many_images_per_request_fit_2000_px(tmp_path: Path) -> None:
    photo = big_photo(tmp_path)
    alone = run("--model", "claude-opus-4-8", str(photo))[1][0]
    assert (alone["width"], alone["height"]) == (2576, 1449)
    code, rows = run("--model", "claude-opus-4-8", "--images-per-request", "21", str(photo))
    assert code == 0 and (rows[0]["width"], rows[0]["height"]) == (2000, 1125)
    twenty = run("--model", "claude-opus-4-8", "--images-per-request", "20", str(photo))[1][0]
    assert (twenty["width"], twenty["height"]) == (2576, 1449)


def test_max_b64_bytes_is_checked_against_the_model(tmp_path: Path) -> None:
    photo = big_photo(tmp_path)
    result = CliRunner().invoke(main, ["prepare", "--max-b64-bytes", str(10**12), str(photo)])
    assert result.exit_code == 2 and "max_b64_bytes" in result.output
    code, rows = run("--model", "claude-opus-4-8", "--max-b64-bytes", str(10 * 1024**2), str(photo))
    assert code == 0 and rows[0]["ok"]
    assert run("--images-per-request", "0", str(photo))[0] == 2
    assert run("--images-per-request", "100000", str(photo))[0] == 2


def test_a_bad_job_is_one_line_naming_the_file_and_key_exit_2(tmp_path: Path) -> None:
    photo = big_photo(tmp_path)
    cases = {
        "max_edgee = 5": "images.max_edgee: unknown key",
        "max_b64_bytes = 99999999999": "images.max_b64_bytes",
        "max_b64_bytes = 100": "images.max_b64_bytes",
    }
    for images, key in cases.items():
        job = write_job(tmp_path, images)
        result = CliRunner().invoke(main, ["prepare", "--job", str(job), str(photo)])
        assert result.exit_code == 2, images
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and str(job) in lines[0] and key in lines[0], lines
        assert result.stdout == ""
    nope = tmp_path / "nope.toml"
    missing = CliRunner().invoke(main, ["prepare", "--job", str(nope), str(photo)])
    assert missing.exit_code == 2 and missing.stderr.strip() == f"batcher: {nope}: no such job file"
    unknown = write_job(tmp_path, model="claude-nope")
    result = CliRunner().invoke(main, ["prepare", "--job", str(unknown), str(photo)])
    assert result.exit_code == 2 and "request.model" in result.stderr
