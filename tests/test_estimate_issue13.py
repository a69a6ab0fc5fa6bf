"""Issue 13, "10 million rows": ``batcher estimate`` works a column at a time (Arrow chunks, image
headers once per distinct image cell) and must give exactly the figures of the row-by-row path, on
manifests with every kind of row: templates plain and formatted, a prompt column, lists of images,
URLs, unreadable images, bad rows of every sort, CSV read by Arrow and by the csv module, Parquet."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from batcher.estimator import PY_WHITESPACE, Estimate, estimate_chunks, estimate_rows, load
from batcher.manifest import Manifest, open_manifest
from tests.test_manifest_issue13 import spy_arrow_chunks

JOB = """
[input]
manifest = "{manifest}"
id_column = "id"
image_column = "image"
prompt = "Describe {{title}}"

[request]
model = "{model}"
max_tokens = 50
system = "You write alt text."

[run]
output = "out"
{extra}
"""

SIZES = [(200, 200), (1000, 1000), (3840, 2160), (90, 1400), (2576, 1449)]
TITLES = ["a cat", "ünïcödé ✓ title", "long " * 40, "x", "tabs\tand, commas"]


def _images(folder: Path) -> list[str]:
    names = []
    for i, (w, h) in enumerate(SIZES):
        name = f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (w, h), (40 * i, 90, 160)).save(folder / name)
        names.append(name)
    (folder / "text.jpg").write_text("not a picture")
    return names


def _records(names: list[str], n: int) -> list[dict]:
    """Good rows cycling over the images, and among them one of each kind of trouble."""
    rows: list[dict] = []
    for i in range(n):
        image: str | list[str] = names[i % len(names)]
        if i % 7 == 3:
            image = [names[i % len(names)], names[(i + 1) % len(names)]]
        rows.append(
            {
                "id": f"r{i}",
                "image": image,
                "title": TITLES[i % len(TITLES)],
                "prompt": f"What is in picture {i}?",
                "n": i,
            }
        )
    trouble = [
        {"id": "url", "image": "https://example.test/a.png", "title": "by URL"},
        {"id": "url-list", "image": ["https://example.test/b.png", names[0]], "title": "mixed"},
        {"id": "gone", "image": "nope.jpg", "title": "missing"},
        {"id": "text", "image": "text.jpg", "title": "not an image"},
        {"id": "no-image", "image": "", "title": "empty image cell"},
        {"id": "no-title", "image": names[1], "title": ""},
        {"id": "  ", "image": names[2], "title": "blank id"},
        {"id": "no-prompt", "image": names[3], "title": "t", "prompt": " \u3000 "},
        {"id": "many", "image": [names[i % len(names)] for i in range(25)], "title": "25 images"},
    ]
    for k, row in enumerate(trouble):
        row.setdefault("prompt", f"prompt {k}")
        row.setdefault("n", 1000 + k)
        rows.insert(3 + 5 * k, row)
    return rows


def _write_csv(path: Path, rows: list[dict], *, extra_lines: dict[int, bytes] | None = None) -> None:
    lines = []
    for row in rows:
        image = row["image"]
        cell = json.dumps(image) if isinstance(image, list) else image
        lines.append([row["id"], cell, row["title"], row["prompt"], str(row["n"])])
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "image", "title", "prompt", "n"])
        writer.writerows(lines)
    if extra_lines:
        body = path.read_bytes().split(b"\r\n")
        for at, line in sorted(extra_lines.items(), reverse=True):
            body.insert(at, line)
        path.write_bytes(b"\r\n".join(body))


def _write_parquet(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [
        r["image"] if isinstance(r["image"], list) else [r["image"]] if r["image"] else [] for r in rows
    ]
    table = pa.table(
        {
            "id": [r["id"] for r in rows],
            "image": pa.array(images, pa.list_(pa.string())),
            "title": [r["title"] or None for r in rows],
            "prompt": [r["prompt"] for r in rows],
            "n": [float("nan") if r["n"] == 1003 else float(r["n"]) for r in rows],
        }
    )
    pq.write_table(table, path, row_group_size=7)


def _job(folder: Path, manifest: str, model: str = "claude-haiku-5-5", extra: str = ""):  # type: ignore[no-untyped-def]
    job_path = folder / "job.toml"
    job_path.write_text(JOB.format(manifest=manifest, model=model, extra=extra))
    return load(job_path)


PROMPTS = [
    {"prompt_template": "Describe {title} (row {id}, {{literal}}) {title}"},  # plain: whole columns
    {"prompt_template": "{title:>60}|{n}|{id!r}"},  # a spec, a conversion: row by row
    {"prompt_column": "prompt"},
]


def _both(manifest: Manifest, job, profile) -> tuple[dict, dict]:  # type: ignore[no-untyped-def]
    by_chunks = estimate_chunks(manifest, job, profile).to_json()
    by_rows = estimate_rows(manifest.rows(), job, profile).to_json()
    return by_chunks, by_rows


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "formatted", "column"])
@pytest.mark.parametrize("model", ["claude-haiku-5-5", "claude-opus-4-8"])
def test_csv_by_chunks_equals_row_by_row(tmp_path: Path, prompt: dict, model: str) -> None:
    names = _images(tmp_path)
    rows = _records(names, 60)
    # a row with a cell too many, one with bytes that are not UTF-8, one with a stray quote
    _write_csv(
        tmp_path / "m.csv",
        rows,
        extra_lines={
            5: b"x1,img0.jpg,t,p,1,extra",
            9: b"x2,img1.jpg,caf\xe9,p,2",
            12: b'x3,"img2.jpg"z,t,p,3',
        },
    )
    job, profile = _job(tmp_path, "m.csv", model, extra="[images]\nmax_image_tokens = 900")
    manifest = _opened(tmp_path / "m.csv", prompt)
    by_chunks, by_rows = _both(manifest, job, profile)
    assert by_chunks == by_rows
    assert by_rows["rows"] == len(rows) + 3
    failures = by_rows["failures"]
    assert failures["bad_row"] >= 5 and failures["not_found"] == 1 and failures["not_an_image"] == 1
    assert by_rows["images_unsized"] == 2


@pytest.mark.parametrize("prompt", PROMPTS, ids=["plain", "formatted", "column"])
def test_parquet_by_chunks_equals_row_by_row(tmp_path: Path, prompt: dict) -> None:
    names = _images(tmp_path)
    rows = _records(names, 40)
    _write_parquet(tmp_path / "m.parquet", rows)
    job, profile = _job(tmp_path, "m.parquet")
    manifest = _opened(tmp_path / "m.parquet", prompt)
    by_chunks, by_rows = _both(manifest, job, profile)
    assert by_chunks == by_rows
    assert by_rows["rows"] == len(rows) and by_rows["rows_failing"] >= 5


def _plain_csv(path: Path, n: int, names: list[str], *, quoted: bool = False) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        fh.write("id,image,title\n")
        for i in range(n):
            title = f'"title, {i}\n""{TITLES[i % 3]}"""' if quoted else f"title number {i} {TITLES[i % 3]}"
            fh.write(f"r{i},{names[i % len(names)]},{title}\n")


@pytest.mark.parametrize("quoted", [False, True])
def test_a_csv_arrow_can_read_is_read_by_arrow_with_the_same_figures(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
    quoted: bool,
) -> None:

    names = _images(tmp_path)
    _plain_csv(tmp_path / "m.csv", 3000, names, quoted=quoted)
    job, profile = _job(tmp_path, "m.csv")
    manifest = open_manifest(
        tmp_path / "m.csv",
        id_column="id",
        image_column="image",
        prompt_column=None,
        prompt_template="Describe {title}",
    )
    manifest.check()
    arrow_used = spy_arrow_chunks(monkeypatch)
    by_chunks, by_rows = _both(manifest, job, profile)
    assert sum(arrow_used) == 3000
    assert by_chunks == by_rows and by_rows["rows_failing"] == 0


@pytest.mark.parametrize(
    "trouble",
    [
        b"r-x,img0.jpg,one,cell too many",
        b"r-x,img0.jpg,caf\xe9",
        b"   ",
        b'r-x,"img0.jpg",quoted',
        b'r-x,"img0.jpg"x,quoted',
    ],
)
def test_arrow_hands_over_to_the_csv_module_where_they_would_differ(
    tmp_path: Path,
    monkeypatch,  # type: ignore[no-untyped-def]
    trouble: bytes,
) -> None:
    import batcher.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "_ARROW_CSV_BLOCK", 16 * 1024)  # many chunks before the line
    names = _images(tmp_path)
    _plain_csv(tmp_path / "m.csv", 4000, names)
    lines = (tmp_path / "m.csv").read_bytes().split(b"\n")
    lines.insert(3500, trouble)
    (tmp_path / "m.csv").write_bytes(b"\n".join(lines))
    job, profile = _job(tmp_path, "m.csv")
    manifest = open_manifest(
        tmp_path / "m.csv",
        id_column="id",
        image_column="image",
        prompt_column=None,
        prompt_template="Describe {title}",
    )
    manifest.check()
    by_chunks, by_rows = _both(manifest, job, profile)
    assert by_chunks == by_rows
    assert by_rows["rows"] == 4000 + (0 if trouble.strip() == b"" else 1)


def test_the_whitespace_class_is_what_str_strip_strips() -> None:
    assert "".join(c for c in map(chr, range(0x110000)) if c.isspace()) == PY_WHITESPACE


def test_costs_come_from_the_input_histogram_whichever_order_rows_came_in() -> None:
    from batcher.estimator import RowTokens, row_cost
    from batcher.models import load_registry

    profile = load_registry()["claude-haiku-5-5"]
    one, two = Estimate(model="m", mode="online"), Estimate(model="m", mode="online")
    tokens = [RowTokens(10 * i % 7, 100 + i % 3) for i in range(50)]
    for t in tokens:
        one.add(t, 1)
    for t in reversed(tokens):
        two.add(t, 1)
    one.finish(profile, 40)
    two.finish(profile, 40)
    assert one.to_json() == two.to_json()
    direct = sum(row_cost(profile, t.input, 40, batch=False) for t in tokens)
    assert math.isclose(one.cost_usd_online, direct, rel_tol=1e-12)
    assert one.output_tokens_max == 50 * 40 and "input_histogram" not in one.to_json()


def test_image_headers_are_read_once_per_distinct_image_cell(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # what made the estimate take 100 us a row: every row's image header read again, over 50 images
    import batcher.images.prepare as prepare
    from batcher.estimator import estimate_job

    names = _images(tmp_path)
    _plain_csv(tmp_path / "m.csv", 5000, names)
    calls: list[str] = []
    real = prepare.probe_size

    def counting(path, options=None):  # type: ignore[no-untyped-def]
        calls.append(str(path))
        return real(path, options)

    monkeypatch.setattr(prepare, "probe_size", counting)
    job, profile = _job(tmp_path, "m.csv")
    est = estimate_job(job, profile)
    assert est.rows == 5000 and est.rows_failing == 0
    assert sorted(calls) == sorted(str(tmp_path / n) for n in names)


def _opened(path: Path, prompt: dict) -> Manifest:
    """The manifest at ``path`` with one of PROMPTS' ways of making the prompt, checked."""
    manifest = open_manifest(
        path,
        id_column="id",
        image_column="image",
        prompt_column=prompt.get("prompt_column"),
        prompt_template=prompt.get("prompt_template"),
    )
    manifest.check()
    return manifest
