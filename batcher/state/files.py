"""Files API uploads (``files``): which image, by content hash, has which file id."""

from __future__ import annotations

from dataclasses import dataclass

from batcher.state.connection import Database

_COLUMNS = "sha256, file_id, bytes, uploaded_at, expires_at"


@dataclass(slots=True)
class FileRecord:
    sha256: str
    file_id: str
    bytes: int
    uploaded_at: float
    expires_at: float | None = None


class FileStore:
    """The ``files`` table (driven by :mod:`batcher.files`)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def put_file(self, record: FileRecord) -> None:
        with self._db.tx() as c:
            c.execute(
                f"INSERT OR REPLACE INTO files({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                (record.sha256, record.file_id, record.bytes, record.uploaded_at, record.expires_at),
            )

    def get_file(self, sha256: str) -> FileRecord | None:
        found = self._select(f"SELECT {_COLUMNS} FROM files WHERE sha256 = ?", (sha256,))
        return found[0] if found else None

    def delete_file(self, sha256: str) -> None:
        with self._db.tx() as c:
            c.execute("DELETE FROM files WHERE sha256 = ?", (sha256,))

    def list_files(self) -> list[FileRecord]:
        return self._select(f"SELECT {_COLUMNS} FROM files ORDER BY uploaded_at")

    def _select(self, sql: str, params: tuple[str, ...] = ()) -> list[FileRecord]:
        with self._db.mutex:
            rows: list[tuple[str, str, int, float, float | None]] = self._db.conn.execute(
                sql, params
            ).fetchall()
        return [FileRecord(*r) for r in rows]
