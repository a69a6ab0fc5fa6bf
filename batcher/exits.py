"""The exit codes of every ``batcher`` command: the one place they are defined (also in README).

=====  ===========================================================================
0      every row is ``ok`` (or the command did what it was asked)
1      fatal: no key, 401/402/spend limit, I/O trouble — what was done is kept
2      usage or config error (job file, model, manifest, duplicate ids): nothing sent
3      the run finished but some rows ended in ``error`` (``prepare``: some images failed)
4      another ``batcher run`` is already running on this output folder
5      the budget stopped the run (``limits.budget_usd``)
75     not finished: interrupted, rows left for the next run, or rows still in live batches
=====  ===========================================================================

A leaf module: the commands, the drivers and the runner all import it, it imports nothing.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_FATAL: Final = 1
EXIT_CONFIG: Final = 2
EXIT_ROW_ERRORS: Final = 3
EXIT_ALREADY_RUNNING: Final = 4
EXIT_BUDGET: Final = 5
#: EX_TEMPFAIL from sysexits.h: cron and schedulers read it as "try again later".
EXIT_INCOMPLETE: Final = 75
