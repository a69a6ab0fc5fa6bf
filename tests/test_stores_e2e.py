"""Object stores end to end (issue 18): a job whose images are in a bucket on moto's S3 server runs
against the simulator and gives every row exactly one answer; a missing object is that row's
``not_found`` and the rest go on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batcher.simulator.server import RunningSimulator
from tests.helpers import Bucket, make_images, messages_sent, results_by_id, run_job, write_job


def bucket_rows(tmp: Path, s3: Bucket, n: int, prefix: str = "data/images") -> list[dict[str, str]]:
    """``n`` rows whose images are objects under ``prefix`` (their local copies made first)."""
    names = make_images(tmp / "local", n)
    rows = []
    for i, name in enumerate(names):
        key = f"{prefix}/{Path(name).name}"
        s3.put(key, tmp / "local" / Path(name).name)
        rows.append({"id": f"row-{i:03d}", "image": s3.uri(key), "kind": "photo"})
    return rows


@pytest.mark.parametrize("transport", ["base64", "url"])
def test_images_in_a_bucket_are_fetched_and_answered_once(
    tmp_path: Path,
    s3: Bucket,
    simulator: RunningSimulator,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    rows = bucket_rows(tmp_path, s3, 4)
    missing = {"id": "missing", "image": s3.uri("data/images/nope.jpg"), "kind": "photo"}
    job = write_job(tmp_path, [*rows[:2], missing, *rows[2:]])
    job.write_text(job.read_text() + f'\n[images]\ntransport = "{transport}"\n')

    code, err = run_job(job, simulator, monkeypatch)
    assert code == 3, err  # one row's error
    results = results_by_id(tmp_path / "out")
    assert set(results) == {r["id"] for r in rows} | {"missing"}
    for row in rows:
        got = results[row["id"]]
        assert got["status"] == "ok" and f"nonce={row['id']}" in got["text"], got
        # An object store URI is not a URL the API can fetch: its bytes went, whatever the transport.
        assert got["images"][0]["transport"] == "base64" and got["images"][0]["media_type"] == "image/jpeg"
    assert results["missing"]["status"] == "error"
    assert results["missing"]["error_type"] == "not_found", results["missing"]["error_message"]
    assert "s3://" in results["missing"]["error_message"]

    # A rerun sends nothing again: the content hash of a bucket image is its URI.
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 3, err
    assert set(results_by_id(tmp_path / "out")) == set(results)


def test_an_image_over_the_size_cap_is_refused_before_download(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = bucket_rows(tmp_path, s3, 2)
    job = write_job(tmp_path, rows)
    job.write_text(job.read_text() + "\n[images]\ndownload_max_bytes = 100\n")
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 3, err
    for got in results_by_id(tmp_path / "out").values():
        assert got["error_type"] == "too_large" and "download_max_bytes" in got["error_message"]


def test_a_job_whose_manifest_and_images_are_in_a_bucket(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = make_images(tmp_path / "local", 5)
    for name in names:  # images/goodNNN.jpg beside the manifest, there
        s3.put(f"data/{name}", tmp_path / "local" / Path(name).name)
    rows = [{"id": f"row-{i:03d}", "image": name, "kind": "photo"} for i, name in enumerate(names)]
    rows.append({"id": "missing", "image": "images/nope.jpg", "kind": "photo"})
    write_job(tmp_path, rows)
    manifest = s3.put("data/manifest.jsonl", tmp_path / "manifest.jsonl")
    (tmp_path / "manifest.jsonl").unlink()  # only the bucket's copy
    job = tmp_path / "job.toml"
    job.write_text(job.read_text().replace('manifest = "manifest.jsonl"', f'manifest = "{manifest}"'))

    code, err = run_job(job, simulator, monkeypatch)
    assert code == 3, err
    results = results_by_id(tmp_path / "out")
    assert set(results) == {r["id"] for r in rows}
    for row in rows[:-1]:
        got = results[row["id"]]
        assert got["status"] == "ok" and f"nonce={row['id']}" in got["text"], got
        assert got["images"][0]["source"] == s3.uri(f"data/{row['image']}")
    assert results["missing"]["error_type"] == "not_found"

    sent = messages_sent(simulator)
    code, err = run_job(job, simulator, monkeypatch)  # the manifest unchanged: nothing to send
    assert code == 3, err
    assert messages_sent(simulator) == sent
    assert set(results_by_id(tmp_path / "out")) == set(results)


def test_parts_are_mirrored_to_results_uri_and_a_rerun_uploads_nothing(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batcher.state import JobState
    from batcher.stores import MIRROR_META_KEY

    rows = bucket_rows(tmp_path, s3, 6)
    job = write_job(tmp_path, rows, part_rows=2)
    prefix = s3.uri("runs/one/")
    job.write_text(job.read_text().replace("[run]\n", f'[run]\nresults_uri = "{prefix}"\n'))

    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    local = sorted(p.name for p in (tmp_path / "out" / "results").glob("part-*.parquet"))
    assert local and s3.keys("runs/one") == [f"runs/one/{name}" for name in local]
    for name in local:  # the same bytes under the same name
        assert (
            s3.fs.cat_file(f"{s3.name}/runs/one/{name}") == (tmp_path / "out" / "results" / name).read_bytes()
        )
    with JobState.open(tmp_path / "out") as state:
        recorded = state.get_meta(MIRROR_META_KEY)
    assert recorded["uri"] == prefix and sorted(recorded["parts"]) == local

    before = {key: s3.fs.info(f"{s3.name}/{key}")["ETag"] for key in s3.keys("runs/one")}
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    assert "results_uri" not in err  # nothing written
    assert {key: s3.fs.info(f"{s3.name}/{key}")["ETag"] for key in s3.keys("runs/one")} == before


def test_results_uri_must_be_an_object_store_prefix(tmp_path: Path) -> None:
    from batcher.config import ConfigError, load_job

    job = write_job(tmp_path, [])
    for bad in ("https://host/out/", "/srv/out", "s3://"):
        job.write_text(job.read_text().replace("[run]\n", f'[run]\nresults_uri = "{bad}"\n', 1))
        with pytest.raises(ConfigError, match="results_uri"):
            load_job(job)
        job = write_job(tmp_path, [])


def test_example_images_may_be_in_a_bucket(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers import fewshot_copy, good_rows

    job = fewshot_copy(tmp_path, good_rows(tmp_path, 2), unlimited=True)
    text = job.read_text()
    for example in sorted((tmp_path / "examples").glob("*.jpg")):
        uri = s3.put(f"examples/{example.name}", example)
        text = text.replace(f'"examples/{example.name}"', f'"{uri}"')
        example.unlink()  # only the bucket's copy
    assert "s3://" in text
    job.write_text(text)
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    assert {r["status"] for r in results_by_id(tmp_path / "out").values()} == {"ok"}


def test_estimate_reads_a_bucket_manifest_and_counts_its_images_at_the_budget(
    tmp_path: Path, s3: Bucket
) -> None:
    from tests.helpers import estimate_json

    rows = bucket_rows(tmp_path, s3, 3)
    write_job(tmp_path, rows)
    manifest = s3.put("data/manifest.jsonl", tmp_path / "manifest.jsonl")
    job = tmp_path / "job.toml"
    job.write_text(job.read_text().replace('manifest = "manifest.jsonl"', f'manifest = "{manifest}"'))
    done = estimate_json(job)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["rows"] == 3 and got["images_unsized"] == 3, got  # not read: counted at the budget


def test_without_the_extra_a_run_stops_with_one_line_naming_it(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from batcher import stores

    rows = bucket_rows(tmp_path, s3, 3)
    job = write_job(tmp_path, rows)
    stores.reset_filesystems()
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if batcher[s3] were not installed
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 1, err
    assert 'pip install "batcher[s3]"' in err and "Traceback" not in err
    assert messages_sent(simulator) == 0
    # Its rows are left for the next run, not recorded as errors.
    assert not (tmp_path / "out" / "results").exists() or not results_by_id(tmp_path / "out")

    # A manifest or results_uri in such a store: refused before anything is sent (exit 2).
    job.write_text(job.read_text().replace("[run]\n", f'[run]\nresults_uri = "{s3.uri("out/")}"\n'))
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 2 and 'pip install "batcher[s3]"' in err, err


def test_batch_mode_reads_bucket_images_and_mirrors_its_parts(
    tmp_path: Path, s3: Bucket, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = bucket_rows(tmp_path, s3, 3)
    job = write_job(tmp_path, rows)
    settings = (
        f'[run]\nmode = "batch"\npoll_initial_s = 0.05\npoll_max_s = 0.2\nresults_uri = "{s3.uri("b/")}"\n'
    )
    job.write_text(job.read_text().replace("[run]\n", settings))
    code, err = run_job(job, simulator, monkeypatch)
    assert code == 0, err
    results = results_by_id(tmp_path / "out")
    assert {r["status"] for r in results.values()} == {"ok"} and len(results) == 3
    local = sorted(p.name for p in (tmp_path / "out" / "results").glob("part-*.parquet"))
    assert local and s3.keys("b") == [f"b/{name}" for name in local]
