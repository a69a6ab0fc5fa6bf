"""The error tree (issue 14): one root, job-level errors carrying their exit codes, mapped to exit
codes by the CLI in one place, and errors that cross processes still pickle whole."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

import batcher
from batcher.api import errors as api_errors
from batcher.api.client import MissingKeyError
from batcher.cli import exit_for
from batcher.config import ConfigError
from batcher.engines import RayEngineError
from batcher.errors import BatcherError, JobError
from batcher.estimator import EstimateError
from batcher.exits import EXIT_ALREADY_RUNNING, EXIT_CONFIG, EXIT_FATAL, EXIT_INCOMPLETE
from batcher.files import UploadError
from batcher.images.command import UnknownModelError
from batcher.images.errors import ImageConfigError, ImageError, ImageTimeout
from batcher.images.pool import PoolError
from batcher.manifest import ManifestError
from batcher.models import ModelConfigError
from batcher.ratelimit import RateLimitConfigError
from batcher.runner import RunRefused
from batcher.sink import SinkError
from batcher.state import AlreadyRunning, DuplicateIds, StateError

PACKAGE = Path(batcher.__file__).parent
#: Exceptions that are control flow inside a run, not errors a caller sees (see batcher/errors.py).
CONTROL_FLOW = {"GaveUp", "Stopped", "RowFailed", "FatalRunError", "_NotTheSame"}
ROOT = "BatcherError"


def test_every_exception_class_in_the_package_is_under_the_one_root() -> None:
    defined: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if "simulator" in path.relative_to(PACKAGE).parts:
            continue  # the API's stand-in keeps its own errors
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name not in {*CONTROL_FLOW, ROOT}:
                bases = {ast.unparse(b) for b in node.bases}
                if bases & {"Exception", "ValueError", "RuntimeError", "LookupError"} and not bases & {
                    "JobError",
                    "BatcherError",
                }:
                    defined.append(f"{path.name}:{node.name}")
    assert defined == []


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("job.toml: request.max_tokens: must be positive"), EXIT_CONFIG),
        (ModelConfigError("models.toml: x: missing"), EXIT_CONFIG),
        (UnknownModelError("unknown model 'nope'"), EXIT_CONFIG),
        (ImageConfigError("images.max_edge: too small"), EXIT_CONFIG),
        (RateLimitConfigError("limits.tier: 'x'"), EXIT_CONFIG),
        (ManifestError("m.csv: no column 'image'"), EXIT_CONFIG),
        (DuplicateIds(["a"], 1, complete=True, read=2), EXIT_CONFIG),
        (EstimateError("--exact-sample: no key"), EXIT_FATAL),
        (StateError("cannot open the job state"), EXIT_FATAL),
        (AlreadyRunning(Path("out"), 123), EXIT_ALREADY_RUNNING),
        (SinkError("results: cannot write"), EXIT_FATAL),
        (PoolError("no image workers left"), EXIT_FATAL),
        (RunRefused("stopped: 401", EXIT_FATAL), EXIT_FATAL),
        (RayEngineError("ray.address 'x': cannot start or join Ray"), EXIT_FATAL),
        (JobError("refused", EXIT_ALREADY_RUNNING), EXIT_ALREADY_RUNNING),
    ],
)
def test_a_job_level_error_carries_the_exit_code_the_cli_exits_with(error: JobError, code: int) -> None:
    assert isinstance(error, JobError) and isinstance(error, BatcherError)
    assert error.exit_code == code == exit_for(error)


def test_row_level_errors_are_under_the_root_but_not_job_level() -> None:
    for error in (ImageTimeout("a.png: slow"), UploadError("503"), api_errors.APITimeoutError("slow")):
        assert isinstance(error, BatcherError) and not isinstance(error, JobError)
    assert isinstance(MissingKeyError("no key"), api_errors.APIError)
    assert exit_for(KeyboardInterrupt()) == EXIT_INCOMPLETE
    assert exit_for(OSError("disk")) == EXIT_FATAL


def test_older_bases_stay_for_code_that_catches_by_them() -> None:
    assert isinstance(ConfigError("x"), ValueError) and isinstance(ManifestError("x"), ValueError)
    assert isinstance(StateError("x"), RuntimeError) and isinstance(UnknownModelError("x"), LookupError)
    assert RunRefused("no", EXIT_CONFIG).code == EXIT_CONFIG


@pytest.mark.parametrize(
    "error",
    [
        DuplicateIds(["a", "b"], 5, complete=False, read=1000),
        StateError("the manifest sync failed"),
        ManifestError("m.csv: unreadable"),
        ConfigError("job.toml: bad"),
        JobError("refused", EXIT_ALREADY_RUNNING),
        ImageTimeout("a.png: not prepared within 1 s"),
    ],
)
def test_errors_that_cross_processes_pickle_whole(error: BatcherError) -> None:
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    if isinstance(error, JobError):
        assert isinstance(again, JobError) and again.exit_code == error.exit_code
    if isinstance(error, ImageError):
        assert isinstance(again, ImageError) and again.error_type == "image_timeout"
