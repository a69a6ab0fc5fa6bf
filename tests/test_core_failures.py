"""Row failures (issue 14): one typed record from every stage of the core, error types from one
registry, and the two timeouts (an image worker's, an API request's) under two names."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from batcher import facts
from batcher.api import errors
from batcher.cli import main
from batcher.core.failures import (
    API_TIMEOUT,
    ROW_ERROR_TYPES,
    api_failure,
    failure_outcome,
    image_failure,
    upload_failure,
)
from batcher.core.outcomes import Transient
from batcher.errors import RowFailure
from batcher.files import UploadError
from batcher.images import errors as image_errors
from batcher.models import load_registry
from batcher.records import Result, Row
from batcher.state import JobState

ROW = Row(id="r1", images=["a.jpg", "/data/b.png"], prompt="p", fields={"k": 1}, index=0)


def _profile():  # type: ignore[no-untyped-def]
    profile = load_registry().get("claude-haiku-5-5")
    assert profile is not None
    return profile


def test_an_image_workers_timeout_and_an_api_timeout_have_two_names() -> None:
    image = image_failure(ROW, image_errors.ImageTimeout("b.png: took more than 30 s"), 2)
    api = api_failure(errors.APITimeoutError("the API did not answer in 600 s"), attempts=3)
    assert image.error_type == "image_timeout" and api.error_type == API_TIMEOUT == "api_timeout"
    assert ROW_ERROR_TYPES[image.error_type] == "image" and ROW_ERROR_TYPES[api.error_type] == "api"
    left = failure_outcome(api, ROW, _profile())
    assert isinstance(left, Transient) and left.error_type == API_TIMEOUT and left.attempts == 3


def test_a_bad_image_is_a_final_error_naming_the_image_once() -> None:
    failure = image_failure(ROW, image_errors.Truncated("/data/b.png: the file ends early"), 2)
    assert (failure.image_index, failure.retryable) == (2, False)
    out = failure_outcome(failure, ROW, _profile())
    assert isinstance(out, Result) and out.status == "error" and out.error_type == "truncated"
    assert out.error_message == "image 2 (/data/b.png): the file ends early"
    assert out.fields == {"k": 1} and [i.source for i in out.images] == ROW.images


def test_an_upload_is_left_for_the_next_run_unless_the_api_refused_it_for_good() -> None:
    again = upload_failure(ROW, UploadError("HTTP 503", retryable=True), 1)
    assert again.retryable and isinstance(failure_outcome(again, ROW, _profile()), Transient)
    final = upload_failure(ROW, UploadError("HTTP 400: bad image"), 1)
    out = failure_outcome(final, ROW, _profile())
    assert isinstance(out, Result) and out.error_type == "upload_failed"


def test_every_image_and_api_error_type_is_registered() -> None:
    todo: list[type[image_errors.ImageError]] = [image_errors.ImageError]
    while todo:
        cls = todo.pop()
        assert ROW_ERROR_TYPES.get(cls.error_type) == "image", cls
        todo.extend(cls.__subclasses__())
    image_types = {t for t, stage in ROW_ERROR_TYPES.items() if stage == "image"}
    used: set[str] = set()
    todo = [image_errors.ImageError]
    while todo:
        cls = todo.pop()
        used.add(cls.error_type)
        todo.extend(cls.__subclasses__())
    assert used == image_types  # the registry names no image type that no error has
    assert {ROW_ERROR_TYPES.get(kind) for kind in facts.ERROR_TYPES.values()} == {"api"}
    for status in (400, 403, 404, 413, 429, 500, 529):
        # A body without its own type: the status's documented type.
        exc = errors.from_response(status, {"type": "error", "error": {"message": "m"}}, {})
        assert ROW_ERROR_TYPES.get(api_failure(exc, 1).error_type) == "api", status


def test_an_image_error_type_outside_the_registry_is_refused_where_it_is_defined() -> None:
    with pytest.raises(TypeError, match="not_registered"):

        class _Unregistered(image_errors.ImageError):
            error_type = "not_registered"

    gc.collect()  # the refused class is gone from ImageError.__subclasses__(), which tests walk
    assert all(cls.error_type != "not_registered" for cls in image_errors.ImageError.__subclasses__())


def test_a_row_bad_as_read_reaches_the_writer_as_the_same_record() -> None:
    bad = Row(
        id="r2", images=[], prompt="", fields={}, index=1, error=RowFailure("bad_row", "image cell is empty")
    )
    assert bad.error is not None
    out = failure_outcome(bad.error, bad, None, mode="batch")
    assert isinstance(out, Result) and (out.status, out.error_type, out.model, out.mode) == (
        "error",
        "bad_row",
        None,
        "batch",
    )
    assert out.error_message == "image cell is empty" and ROW_ERROR_TYPES[bad.error.error_type] == "row"


def test_batcher_status_counts_an_image_workers_timeout_apart_from_an_api_timeout(tmp_path: Path) -> None:
    rows = [
        Row(id="slow-image", images=["a.jpg"], prompt="p", fields={}, index=0),
        Row(id="slow-api", images=["b.jpg"], prompt="p", fields={}, index=1),
    ]
    image = failure_outcome(
        image_failure(rows[0], image_errors.ImageTimeout("a.jpg: took 30 s"), 1), rows[0], _profile()
    )
    api = failure_outcome(api_failure(errors.APITimeoutError("no answer in 600 s"), 3), rows[1], _profile())
    out = tmp_path / "out"
    with JobState.open(out) as state:
        state.sync_rows(rows)
        assert isinstance(image, Result) and isinstance(api, Transient)
        state.record(image)
        state.record_transient(api.row_id, api.error_type, api.message, api.attempts)
    shown = CliRunner().invoke(main, ["status", "--json", str(out)])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["errors_by_type"] == {"image_timeout": 1, "api_timeout": 1}
