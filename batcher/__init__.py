"""batcher: run Claude's vision over large image sets, exactly once per row.

From Python (see README, "Python API")::

    import batcher

    summary = batcher.run("job.toml")  # RunSummary: ok, errors, left, exit_code, cost_usd...
    figures = batcher.estimate("job.toml")  # Estimate: rows, images, input_tokens, cost_usd_online...
    image = batcher.prepare_image("photo.jpg", model="claude-haiku-5-5")  # PreparedImage
    page = batcher.make_report("out")  # ReportStats: path, cards, results, sampled, bytes, seconds

The names are imported on first use, so ``import batcher`` (and ``batcher --help``) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from batcher.config import JobConfig as JobConfig
    from batcher.errors import BatcherError as BatcherError
    from batcher.errors import JobError as JobError
    from batcher.errors import RowFailure as RowFailure
    from batcher.estimator import Estimate as Estimate
    from batcher.images.errors import ImageError as ImageError
    from batcher.images.prepare import PreparedImage as PreparedImage
    from batcher.python_api import RunSummary as RunSummary
    from batcher.python_api import estimate as estimate
    from batcher.python_api import load_job as load_job
    from batcher.python_api import make_report as make_report
    from batcher.python_api import prepare_image as prepare_image
    from batcher.python_api import run as run
    from batcher.report.build import ReportStats as ReportStats

#: Exported name -> the module that defines it.
_EXPORTS = {
    "run": "batcher.python_api",
    "estimate": "batcher.python_api",
    "prepare_image": "batcher.python_api",
    "load_job": "batcher.python_api",
    "make_report": "batcher.python_api",
    "ReportStats": "batcher.report.build",
    "JobError": "batcher.errors",
    "BatcherError": "batcher.errors",
    "RowFailure": "batcher.errors",
    "RunSummary": "batcher.python_api",
    "JobConfig": "batcher.config",
    "Estimate": "batcher.estimator",
    "PreparedImage": "batcher.images.prepare",
    "ImageError": "batcher.images.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
