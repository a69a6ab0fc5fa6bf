"""What ``batcher status`` shows: counts over every owner's tables, read in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

from batcher.state.connection import Database, Params


@dataclass(slots=True)
class Summary:
    """Counts for ``batcher status``: rows of the current manifest, and the job's total spend."""

    rows: int
    by_status: dict[str, int]
    errors_by_type: dict[str, int]
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float
    #: Wall time of all runs (an unfinished run counts up to its last write).
    time_spent_s: float
    #: Sum of per-row request latency.
    request_time_s: float
    runs: int
    exported_rows: int
    parts: int
    files: int
    file_bytes: int
    removed_rows: int
    #: warnings on the current manifest's results (e.g. small_image), by kind
    warnings: dict[str, int] = field(default_factory=dict)
    #: done/error rows whose content hash changed since they were answered (``--redo-changed``)
    changed_rows: int = 0
    #: answers of removed rows (kept apart under OUT/removed, not in OUT/results)
    removed_answers: int = 0
    #: structured output: answers asked again because their JSON did not fit the schema (all runs)
    reasks: int = 0
    #: prompt cache (all runs): answers that read the cached prefix, answers that read or wrote it,
    #: their ratio (None: no answer used the cache), and what the cache saved in dollars (cost with
    #: every cached token as plain input, less the cost; writes count against it)
    cache_reads: int = 0
    cache_uses: int = 0
    cache_hit_rate: float | None = None
    cache_saved_usd: float = 0.0


def summarize(db: Database, pass_id: int | None, changed_rows: int) -> Summary:
    """Counts by status and error type for the manifest of ``pass_id`` (the current pass); tokens,
    cost and time over the whole job."""
    by_status: dict[str, int] = {}
    errors: dict[str, int] = {}
    warnings: dict[str, int] = {}
    rows = 0
    if pass_id is not None:
        for status, n in _tally(
            db,
            "SELECT coalesce(s.status, 'pending'), count(*) FROM rows r LEFT JOIN results s "
            "ON s.id = r.id WHERE r.last_seen_pass >= ? GROUP BY 1",
            (pass_id,),
        ).items():
            by_status["ok" if status == "done" else status] = n
            rows += n
        # json_valid: a result stored by an older batcher may hold NaN, which json_each refuses.
        warnings = _tally(
            db,
            "SELECT w.value, count(*) FROM rows r JOIN results s ON s.id = r.id, "
            "json_each(CASE WHEN json_valid(s.result_json) THEN s.result_json END, '$.warnings') w "
            "WHERE r.last_seen_pass >= ? AND s.result_json IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
            (pass_id,),
        )
        errors = _tally(
            db,
            "SELECT s.error_type, count(*) FROM rows r JOIN results s ON s.id = r.id "
            "WHERE r.last_seen_pass >= ? AND s.status IN ('error', 'transient') "
            "AND s.error_type IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
            (pass_id,),
        )
    with db.mutex:
        spend: tuple[int, int, int, int, float, float, int] = db.conn.execute(
            "SELECT coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), "
            "coalesce(sum(cache_read_tokens), 0), coalesce(sum(cache_write_tokens), 0), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(latency_s), 0), count(part_id) FROM results"
        ).fetchone()
        runs: tuple[float, int] = db.conn.execute(
            "SELECT coalesce(sum(coalesce(finished_at, last_write_at) - started_at), 0), count(*) FROM passes"
        ).fetchone()
        reasks: int = db.conn.execute("SELECT coalesce(sum(reasks), 0) FROM results").fetchone()[0]
        cache: tuple[int, int, float] = db.conn.execute(
            "SELECT coalesce(sum(cache_reads), 0), coalesce(sum(cache_uses), 0), "
            "coalesce(sum(cache_saved_usd), 0) FROM results"
        ).fetchone()
        files: tuple[int, int] = db.conn.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM files"
        ).fetchone()
        removed: tuple[int, int] = (
            db.conn.execute(
                "SELECT count(*), count(s.result_json) FROM rows r LEFT JOIN results s ON s.id = r.id "
                "WHERE r.last_seen_pass < ?",
                (pass_id,),
            ).fetchone()
            if pass_id is not None
            else (0, 0)
        )
    tin, tout, cread, cwrite, cost, latency, exported = spend
    return Summary(
        rows=rows,
        by_status=by_status,
        errors_by_type=errors,
        input_tokens=tin,
        output_tokens=tout,
        cache_read_input_tokens=cread,
        cache_creation_input_tokens=cwrite,
        cost_usd=cost,
        time_spent_s=runs[0],
        request_time_s=latency,
        runs=runs[1],
        exported_rows=exported,
        parts=db.count("SELECT count(*) FROM parts"),
        files=files[0],
        file_bytes=files[1],
        removed_rows=removed[0],
        warnings=warnings,
        changed_rows=changed_rows,
        removed_answers=removed[1],
        reasks=reasks,
        cache_reads=cache[0],
        cache_uses=cache[1],
        cache_hit_rate=hit_rate(cache[0], cache[1]),
        cache_saved_usd=cache[2],
    )


def hit_rate(reads: int, uses: int) -> float | None:
    """Answers that read the cached prefix over those that read or wrote it (None: none did)."""
    return reads / uses if uses else None


def _tally(db: Database, sql: str, params: Params) -> dict[str, int]:
    """``{label: count}`` from a ``SELECT label, count(*) ... GROUP BY 1`` query, in its order."""
    with db.mutex:
        pairs: list[tuple[str, int]] = db.conn.execute(sql, params).fetchall()
    return dict(pairs)
