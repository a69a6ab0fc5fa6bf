"""The simulator's Files API through real sockets: upload, list, get, use, delete, expiry, limits."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from batcher import facts
from batcher.simulator.config import SimConfig
from batcher.simulator.errors import ApiError
from batcher.simulator.files import clean_filename, mime_type_of, parse_expiry
from batcher.simulator.filestore import FileStore
from batcher.simulator.ledger import Ledger
from batcher.simulator.server import RunningSimulator
from tests.simulator.test_validate import image_bytes

HEADERS = {"x-api-key": "test", "anthropic-version": facts.API_VERSION, "anthropic-beta": facts.FILES_BETA}
HAIKU = "claude-haiku-5-5"
Check = Callable[[Any, str], None]


@pytest.fixture
def client(simulator: RunningSimulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=simulator.base_url, headers=HEADERS, timeout=30) as c:
        yield c


def upload(
    client: httpx.Client, data: bytes, name: str = "img.png", content_type: str = "image/png", **fields: str
) -> httpx.Response:
    return client.post("/v1/files", files={"file": (name, data, content_type)}, data=fields)


def uploaded(client: httpx.Client, data: bytes, **kwargs: Any) -> dict[str, Any]:
    response = upload(client, data, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


def file_message(file_id: str, nonce: str) -> dict[str, Any]:
    return {
        "model": HAIKU,
        "max_tokens": 200,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "file", "file_id": file_id}},
                    {"type": "text", "text": f"Caption it. nonce={nonce}"},
                ],
            }
        ],
    }


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == facts.ERROR_TYPES[status]
    return str(body["error"]["message"])


# --- the life of a file ------------------------------------------------------------------------------


def test_upload_list_get_use_delete(client: httpx.Client, simulator: RunningSimulator) -> None:
    data = image_bytes(300, 200)
    meta = uploaded(client, data, name="photos/cat.png")
    assert meta["id"].startswith("file_") and meta["type"] == "file"
    assert (meta["filename"], meta["mime_type"], meta["size_bytes"]) == ("cat.png", "image/png", len(data))
    assert meta["downloadable"] is False and meta["expires_at"] is None
    assert meta["created_at"].endswith("Z")

    listed = client.get("/v1/files").json()
    assert [f["id"] for f in listed["data"]] == [meta["id"]]
    assert client.get(f"/v1/files/{meta['id']}").json() == meta

    answer = client.post("/v1/messages", json=file_message(meta["id"], "f-1"))
    assert answer.status_code == 200, answer.text
    assert "300x200 image/png (file)" in answer.json()["content"][0]["text"]

    book = client.get("/_ledger").json()
    assert book["uploads_by_hash"] == {hashlib.sha256(data).hexdigest(): 1}
    assert book["files_bytes_stored"] == len(data) == simulator.sim.files.bytes_stored

    deleted = client.delete(f"/v1/files/{meta['id']}")
    assert deleted.json() == {"id": meta["id"], "type": "file_deleted"}
    assert meta["id"] in error_of(client.get(f"/v1/files/{meta['id']}"), 404)
    error_of(client.delete(f"/v1/files/{meta['id']}"), 404)
    gone = client.post("/v1/messages", json=file_message(meta["id"], "f-2"))
    assert "messages.0.content.0.source.file_id" in error_of(gone, 404)
    assert client.get("/v1/files").json()["data"] == []
    assert client.get("/_ledger").json()["files_bytes_stored"] == 0
    assert simulator.sim.files.image_bytes(meta["id"]) is None


def test_an_expired_file_is_gone_everywhere(client: httpx.Client, simulator: RunningSimulator) -> None:
    meta = uploaded(client, image_bytes(), expires_in_seconds="3600")
    assert meta["expires_at"] is not None and meta["expires_at"] > meta["created_at"]
    assert simulator.sim.files.expire(meta["id"])
    assert client.get("/_ledger").json()["files_bytes_stored"] == 0
    error_of(client.get(f"/v1/files/{meta['id']}"), 404)
    error_of(client.post("/v1/messages", json=file_message(meta["id"], "e-1")), 404)
    assert client.get("/v1/files").json()["data"] == []
    assert not simulator.sim.files.expire(meta["id"])


def test_expiry_runs_on_the_stores_clock() -> None:
    now = [1000.0]
    store = FileStore(Ledger(), clock=lambda: now[0])
    lasting = store.add(b"forever", "a.txt", "text/plain")
    brief = store.add(image_bytes(), "b.png", "image/png", expires_in_s=3600)
    now[0] += 3599.9
    assert store.image_bytes(brief.id) is not None
    now[0] += 0.1
    assert store.image_bytes(brief.id) is None and store.get(brief.id) is None
    assert [f.id for f in store.live()] == [lasting.id]
    assert store.bytes_stored == len(b"forever")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("3600", True),
        ("7776000", True),
        ("3599", False),
        ("7776001", False),
        ("0", False),
        ("an hour", False),
    ],
)
def test_expires_in_seconds_bounds(client: httpx.Client, value: str, ok: bool) -> None:
    response = upload(client, image_bytes(), expires_in_seconds=value)
    if ok:
        assert response.status_code == 200, response.text
    else:
        assert error_of(response, 400).startswith("expires_in_seconds: ")


# --- what every route requires ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/files"),
        ("GET", "/v1/files"),
        ("GET", "/v1/files/file_x"),
        ("DELETE", "/v1/files/file_x"),
    ],
)
def test_every_route_works_without_the_beta_header(
    simulator: RunningSimulator, method: str, path: str
) -> None:
    # Issue 13: the current SDK sends no Files beta header and the API does not need it.
    headers = {k: v for k, v in HEADERS.items() if k != "anthropic-beta"}
    with httpx.Client(base_url=simulator.base_url, headers=headers) as plain:
        files = {"file": ("a.png", image_bytes(), "image/png")} if method == "POST" else None
        response = plain.request(method, path, files=files)
    if path.endswith("file_x"):
        assert "file_x" in error_of(response, 404)  # reached the route: the id is unknown
    else:
        assert response.status_code == 200, response.text
    assert response.headers["request-id"].startswith("req_")


def test_no_files_api_on_bedrock_or_vertex(make_simulator: Callable[..., RunningSimulator]) -> None:
    for platform in ("bedrock", "vertex"):
        handle = make_simulator(SimConfig(platform=platform))
        with httpx.Client(base_url=handle.base_url, headers=HEADERS) as c:
            assert platform in error_of(upload(c, image_bytes()), 404)
            error_of(c.get("/v1/files"), 404)


def test_an_upload_needs_a_file_part(client: httpx.Client) -> None:
    assert error_of(client.post("/v1/files", data={"name": "x"}), 400).startswith("file: ")
    assert error_of(client.post("/v1/files", json={"file": "x"}), 400).startswith("file: ")


def test_files_over_the_limit_are_413(client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facts, "FILE_MAX_BYTES", 1000)
    response = upload(client, b"x" * 1001, name="big.bin", content_type="application/octet-stream")
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
    assert upload(client, b"x" * 1000, name="ok.bin").status_code == 200


def test_the_files_budget_is_asked_on_every_route(
    client: httpx.Client, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> None:
        raise ApiError(429, "files rate limit", headers={"retry-after": "7"})

    monkeypatch.setattr(simulator.sim.buckets, "admit_files", refuse)
    for response in (
        upload(client, image_bytes()),
        client.get("/v1/files"),
        client.get("/v1/files/file_x"),
        client.delete("/v1/files/file_x"),
    ):
        error_of(response, 429)
        assert response.headers["retry-after"] == "7"


# --- mime types and names ---------------------------------------------------------------------------


def test_the_mime_type_comes_from_the_bytes_first(client: httpx.Client) -> None:
    jpeg = uploaded(
        client, image_bytes(fmt="JPEG"), name="really.png", content_type="application/octet-stream"
    )
    assert jpeg["mime_type"] == "image/jpeg"
    text = uploaded(client, b"hello", name="notes.txt", content_type="text/plain")
    assert text["mime_type"] == "text/plain"
    answer = client.post("/v1/messages", json=file_message(text["id"], "t-1"))
    assert "not an image type" in error_of(answer, 400)


def test_mime_type_and_filename_rules() -> None:
    assert mime_type_of(image_bytes(fmt="GIF"), "text/plain", "a.txt") == "image/gif"
    assert mime_type_of(b"%PDF-1.7", "application/pdf; x=1", "a") == "application/pdf"
    assert mime_type_of(b"{}", "application/octet-stream", "data.json") == "application/json"
    assert mime_type_of(b"??", None, "noext") == "application/octet-stream"
    assert clean_filename("C:\\scans\\page 1.png", "image/png") == "page 1.png"
    assert clean_filename("", "image/png") == "unnamed.png"
    assert clean_filename(None, "application/x-unknown") == "unnamed"
    with pytest.raises(ApiError, match=r"^file\.filename: "):
        clean_filename("a" * 501, "image/png")
    assert parse_expiry(None) is None and parse_expiry(" 4000 ") == 4000


# --- paging ---------------------------------------------------------------------------------------


def test_lists_page_newest_first_and_cursors_survive_deletion(client: httpx.Client) -> None:
    ids = [uploaded(client, image_bytes(10 + i, 10))["id"] for i in range(5)]
    newest_first = ids[::-1]
    first = client.get("/v1/files", params={"limit": 2}).json()
    assert [f["id"] for f in first["data"]] == newest_first[:2]
    assert (first["first_id"], first["last_id"], first["has_more"]) == (*newest_first[:2], True)

    client.delete(f"/v1/files/{first['last_id']}")  # the cursor's own file goes away
    second = client.get("/v1/files", params={"limit": 2, "after_id": first["last_id"]}).json()
    assert [f["id"] for f in second["data"]] == newest_first[2:4] and second["has_more"]
    last = client.get("/v1/files", params={"limit": 2, "after_id": second["last_id"]}).json()
    assert [f["id"] for f in last["data"]] == newest_first[4:] and not last["has_more"]

    back = client.get("/v1/files", params={"limit": 1, "before_id": second["first_id"]}).json()
    assert [f["id"] for f in back["data"]] == [newest_first[0]] and not back["has_more"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "x"},
        {"after_id": "file_nope"},
        {"after_id": "a", "before_id": "b"},
    ],
)
def test_bad_list_parameters_are_400(client: httpx.Client, params: dict[str, str]) -> None:
    error_of(client.get("/v1/files", params=params), 400)


# --- against the published schema ---------------------------------------------------------------


def test_answers_match_the_openapi_schema(client: httpx.Client, check: Check) -> None:
    meta = uploaded(client, image_bytes(), expires_in_seconds="7200")
    check(meta, "BetaFileMetadataSchema")
    check(client.get(f"/v1/files/{meta['id']}").json(), "BetaFileMetadataSchema")
    check(client.get("/v1/files").json(), "BetaFileListResponse")
    check(client.delete(f"/v1/files/{meta['id']}").json(), "BetaFileDeleteResponse")
    check(client.get(f"/v1/files/{meta['id']}").json(), "BetaErrorResponse")
    check(upload(client, image_bytes(), expires_in_seconds="1").json(), "BetaErrorResponse")


def test_the_sdks_opaque_page_cursor_and_ids_filter(client: httpx.Client) -> None:
    ids = [uploaded(client, image_bytes(10 + i, 10))["id"] for i in range(5)]
    walked, params = [], {"limit": "2"}
    while True:
        answer = client.get("/v1/files", params=params).json()
        walked += [f["id"] for f in answer["data"]]
        if answer["next_page"] is None:
            assert not answer["has_more"]
            break
        assert answer["next_page"].startswith("page_")
        params = {"limit": "2", "page": answer["next_page"]}
    assert walked == ids[::-1]

    client.delete(f"/v1/files/{ids[1]}")
    chosen = client.get(
        "/v1/files", params=[("ids[]", ids[0]), ("ids[]", ids[1]), ("ids[]", "file_unknown")]
    ).json()
    assert [f["id"] for f in chosen["data"]] == [ids[0]] and chosen["next_page"] is None
    error_of(client.get("/v1/files", params=[("ids[]", ids[0]), ("limit", "2")]), 400)
    error_of(client.get("/v1/files", params={"ids": ",".join(f"file_{i}" for i in range(101))}), 400)
    assert error_of(client.get("/v1/files", params={"page": "page_bogus"}), 400).startswith("page: ")
    assert error_of(client.get("/v1/files", params={"page": "nope"}), 400).startswith("page: ")
