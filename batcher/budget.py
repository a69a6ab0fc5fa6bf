"""``[limits] budget_usd``: never start a request the budget could not pay for.

Before a row's request is sent, its worst case is *reserved*: its input as estimated
(:func:`batcher.core.plan.row_worst_cost`: image tokens exact, text padded) and ``max_tokens`` of
output, as its :class:`~batcher.core.plan.PlannedRequest` says (planned once per row, for the rate
limiter too), at the price of the run's mode. When the answer comes, the reservation is replaced
by what its ``usage`` really cost (cache reads and writes at their own prices, by
:func:`batcher.cost.usage_cost`). A row whose reservation
would take spent + reserved past the budget is not sent, and from then on no row is: the run stops
taking rows, finishes what is in flight and exits 5. Spend of earlier runs (the job state's
``cost_usd``) counts from the start, so a budget is the job's, not one run's.

So spend stays within the budget as long as each answer costs no more than its worst case, which
``max_tokens`` guarantees for output. The one spend batcher cannot see is a request the API
answered but whose answer never arrived (a cut connection): the API bills it, no ``usage`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from batcher.config import JobConfig
from batcher.core.outcomes import Outcome
from batcher.core.plan import PlannedRequest

#: ``Counters.stop_reason`` when the budget stopped the run.
BUDGET_STOP = "budget"


@dataclass
class Budget:
    """Spent and reserved dollars against a limit (None: no limit, only accounting). Pure."""

    limit_usd: float | None
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    #: once a reservation was refused, every later one is too: the run stops taking rows
    refused: bool = False

    def reserve(self, usd: float) -> bool:
        """Hold ``usd`` for a request about to be sent; False (and latched) if it does not fit."""
        if self.refused:
            return False
        if self.limit_usd is not None and self.spent_usd + self.reserved_usd + usd > self.limit_usd:
            self.refused = True
            return False
        self.reserved_usd += usd
        return True

    def settle(self, reserved_usd: float, actual_usd: float) -> None:
        """A request came back: its hold is released, what it cost is spent."""
        self.reserved_usd = max(0.0, self.reserved_usd - reserved_usd)
        self.spent_usd += actual_usd

    def line(self) -> str:
        limit = f" of ${self.limit_usd:,.4f}" if self.limit_usd is not None else ""
        return f"spent ${self.spent_usd:,.4f}{limit}"


@dataclass
class BudgetGate:
    """The drivers' budget hook (:class:`batcher.core.seams.BudgetHook`): reserve a planned
    request's worst case, settle it with the row's outcome."""

    budget: Budget

    def hold(self, plan: PlannedRequest) -> float | None:
        """The dollars held for this row, or None: the budget cannot take it (send nothing)."""
        usd = plan.worst_usd
        return usd if self.budget.reserve(usd) else None

    async def reserve(self, plan: PlannedRequest) -> float | None:
        """:meth:`hold`, as the request stage awaits it (a cluster's budget is remote)."""
        return self.hold(plan)

    async def settle(self, held: float, outcome: Outcome | None) -> None:
        self.budget.settle(held, getattr(outcome, "cost_usd", None) or 0.0)


def gate_for(job: JobConfig, spent_usd: float) -> BudgetGate:
    """The gate for a job given what earlier runs spent (the plan prices each row for its mode)."""
    return BudgetGate(Budget(job.limits.budget_usd, spent_usd=spent_usd))
