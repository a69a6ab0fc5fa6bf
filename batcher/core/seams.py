"""The seams of the run core, as Protocols: what the core needs of the job state, the results sink,
the image preparer, the downloader and the budget. The real classes (:class:`batcher.state.JobState`,
:class:`batcher.sink.Sink`, :class:`batcher.images.pool.ImagePool`, :class:`batcher.api.client.Client`,
:class:`batcher.budget.BudgetGate`) and the tests' fakes both satisfy them, which mypy checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from batcher.images.prepare import PreparedImage
from batcher.images.sizing import ImageOptions
from batcher.models import ModelProfile
from batcher.records import Result

if TYPE_CHECKING:
    from batcher.api.download import DownloadLimits
    from batcher.core.outcomes import Outcome
    from batcher.core.plan import PlannedRequest


@runtime_checkable
class RunState(Protocol):
    """Where outcomes become durable: each call has returned only once it is on disk."""

    def record(self, result: Result, *, reasks: int = 0) -> None: ...

    def record_transient(self, row_id: str, error_type: str, message: str, attempts: int) -> None: ...

    def set_meta(self, key: str, value: object) -> None: ...


@runtime_checkable
class ResultSink(Protocol):
    """Where recorded rows are exported to (Parquet parts under OUT/results)."""

    def export(self, max_rows: int) -> object: ...


@runtime_checkable
class ImagePreparer(Protocol):
    """Prepares one image within the time and memory bounds of its workers (the image pool)."""

    @property
    def workers(self) -> int: ...

    async def prepare(
        self,
        source: str | bytes,
        profile: ModelProfile,
        options: ImageOptions,
        images_in_request: int = 1,
    ) -> PreparedImage: ...


@runtime_checkable
class Downloader(Protocol):
    """Fetches an image URL when the job sends bytes, not URLs."""

    async def fetch(self, url: str, limits: DownloadLimits) -> bytes: ...


@runtime_checkable
class BudgetHook(Protocol):
    """``[limits] budget_usd``: hold a planned request's worst case, settle it with its outcome.
    Awaited: a cluster's budget is held in another process (``batcher.engines.ray_limiter``)."""

    async def reserve(self, plan: PlannedRequest) -> float | None: ...

    async def settle(self, held: float, outcome: Outcome | None) -> None: ...


if TYPE_CHECKING:
    # Checked by mypy, never run: the real classes satisfy the seams (the tests' fakes are held to
    # them the same way, in tests/test_core_seams.py).
    from batcher.api.client import Client
    from batcher.budget import BudgetGate
    from batcher.images.pool import ImagePool
    from batcher.sink import Sink
    from batcher.state import JobState

    def _real_classes_fit(
        state: JobState, sink: Sink, pool: ImagePool, client: Client, gate: BudgetGate
    ) -> None:
        _state: RunState = state
        _sink: ResultSink = sink
        _pool: ImagePreparer = pool
        _client: Downloader = client
        _gate: BudgetHook = gate
