"""Engines that run a job's requests beyond one process: the Ray engine (``[run] engine = "ray"``):
:mod:`~batcher.engines.ray_driver` (the driver: state, lock, results), :mod:`~batcher.engines.ray_worker`
(the workers: prepare and send, through the run core) and :mod:`~batcher.engines.ray_limiter` (one
rate budget for the cluster). Nothing here imports ``ray`` at import time: ``batcher --help``
stays light."""

from __future__ import annotations

from typing import Final

from batcher.errors import JobError

#: pip's words for the extra
INSTALL: Final = 'pip install "batcher[ray]"'


class RayEngineError(JobError):
    """Ray cannot run the job: no cluster at the address, workers never placed (exit 1)."""
