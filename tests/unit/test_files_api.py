"""The Files API routes, driven by the real ``anthropic`` SDK against a real uvicorn server.

The server runs in a subprocess (so its memory can be measured on its own) on a port it picks
itself and prints; principal = the ``x-principal`` header (default ``alice``); ``on_upload``
records attachments in ``<root>/attached.jsonl`` and fails for container ``missing``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx2
import pytest
from starlette.applications import Starlette

from mcp_codeexec.files import FileRecord, FileStore
from mcp_codeexec.files_api import files_routes

REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024

SERVER = r"""
import json, socket, sys
from pathlib import Path
import uvicorn
from starlette.applications import Starlette
from mcp_codeexec.files import FileStore
from mcp_codeexec.files_api import files_routes

root, max_upload = Path(sys.argv[1]), int(sys.argv[2])
store = FileStore(root, retention_days=30)

async def on_upload(record, container_id):
    if container_id == "missing":
        raise LookupError(f"no such container: {container_id}")
    with open(root / "attached.jsonl", "a") as f:
        f.write(json.dumps({"file_id": record.id, "container_id": container_id}) + "\n")

app = Starlette(routes=files_routes(
    store, lambda request: request.headers.get("x-principal", "alice"), on_upload, max_upload_bytes=max_upload))
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(128)
print(sock.getsockname()[1], flush=True)
uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off")).run(sockets=[sock])
"""


@dataclass
class Server:
    proc: subprocess.Popen[str]
    root: Path
    url: str

    def client(self, principal: str = "alice") -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key="test-key", base_url=self.url, max_retries=0, default_headers={"x-principal": principal}
        )

    def peak_rss(self) -> int:
        """The server process's peak resident set size (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def leftovers(self) -> list[str]:
        return sorted(p.name for d in ("blobs", "tmp") for p in (self.root / d).iterdir())


def _start(root: Path, max_upload: int) -> Server:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(root), str(max_upload)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None
    port = proc.stdout.readline().strip()  # the socket is listening once this is printed
    if not port.isdigit():
        proc.kill()
        proc.wait()
        raise AssertionError(f"server did not start (exit {proc.poll()})")
    return Server(proc, root, f"http://127.0.0.1:{port}")


def _stop(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()
    if server.proc.stdout:
        server.proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _start(tmp_path_factory.mktemp("files_api") / "store", 160 * MiB)
    yield s
    _stop(s)


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = _start(tmp_path_factory.mktemp("files_api_small") / "store", 1 * MiB)
    yield s
    _stop(s)


def _model():
    import anthropic.types.beta as beta

    return getattr(beta, "BetaFileMetadata", None) or beta.FileMetadata


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _download_sha(client: anthropic.Anthropic, file_id: str) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with client.beta.files.with_streaming_response.download(file_id) as response:
        for chunk in response.iter_bytes(MiB):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------- the SDK round trip


def test_sdk_uploads_lists_retrieves_downloads_and_deletes_a_csv(server: Server) -> None:
    client = server.client()
    data = b"city,temp\nParis,21\nOslo,12\n"
    uploaded = client.beta.files.upload(file=("weather.csv", data, "text/csv"))
    assert uploaded.id.startswith("file_") and uploaded.filename == "weather.csv"
    assert uploaded.size_bytes == len(data) and uploaded.mime_type == "text/csv" and uploaded.type == "file"
    assert uploaded.downloadable is True

    assert uploaded.id in [f.id for f in client.beta.files.list()]
    meta = client.beta.files.retrieve_metadata(uploaded.id)
    assert meta == uploaded and isinstance(meta, _model())
    assert client.beta.files.download(uploaded.id).read() == data

    deleted = client.beta.files.delete(uploaded.id)
    assert deleted.id == uploaded.id and deleted.type == "file_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.beta.files.retrieve_metadata(uploaded.id)
    assert uploaded.id not in [f.id for f in client.beta.files.list()]


def test_a_binary_file_downloads_byte_identical_with_its_sniffed_type(server: Server) -> None:
    client = server.client()
    data = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64 + os.urandom(100_000) + b"\r\n--boundary\r\n\x00"
    uploaded = client.beta.files.upload(file=("plot.bin", data))
    assert uploaded.mime_type == "image/png" and uploaded.size_bytes == len(data)
    assert _download_sha(client, uploaded.id) == (_sha(data), len(data))
    with httpx2.stream("GET", f"{server.url}/v1/files/{uploaded.id}/content") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.headers["content-length"] == str(len(data))
        assert response.headers["x-content-sha256"] == _sha(data)
        assert response.headers["content-disposition"].startswith('attachment; filename="plot.bin"')


def test_a_100_mb_file_streams_both_ways_byte_identical_in_bounded_server_memory(
    server: Server, tmp_path: Path
) -> None:
    size = 100 * MiB + 12345
    path = tmp_path / "big.bin"
    h = hashlib.sha256()
    with path.open("wb") as out:
        block = os.urandom(MiB)
        for i in range(size // MiB):
            chunk = bytes([i & 0xFF]) + block[1:]  # every MiB differs
            out.write(chunk)
            h.update(chunk)
        tail = os.urandom(size % MiB)
        out.write(tail)
        h.update(tail)
    expected = h.hexdigest()

    client = server.client()
    rss_before = server.peak_rss()
    with path.open("rb") as fh:  # a file object: the SDK streams it instead of reading it whole
        uploaded = client.beta.files.upload(file=("big.bin", fh, "application/octet-stream"))
    assert uploaded.size_bytes == size
    assert _download_sha(client, uploaded.id) == (expected, size)
    growth = server.peak_rss() - rss_before
    # a server holding the file in memory would grow by >= 100 MiB at some point
    assert growth < 40 * MiB, f"server peak RSS grew by {growth / MiB:.1f} MiB"
    assert os.listdir(server.root / "tmp") == []
    client.beta.files.delete(uploaded.id)


# --------------------------------------------------------------------------- errors


def test_an_unknown_id_is_a_404_not_found_error(server: Server) -> None:
    client = server.client()
    for call in (
        client.beta.files.retrieve_metadata,
        client.beta.files.delete,
        lambda i: client.beta.files.download(i).read(),
    ):
        with pytest.raises(anthropic.NotFoundError) as exc:
            call("file_doesNotExist0000000000")
        assert exc.value.status_code == 404
        assert exc.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    response = httpx2.get(f"{server.url}/v1/files/..%2F..%2Ffiles.db/content")
    assert response.status_code == 404


def test_another_principals_file_is_indistinguishable_from_a_missing_one(server: Server) -> None:
    alice, bob = server.client("alice"), server.client("bob")
    uploaded = alice.beta.files.upload(file=("secret.txt", b"alice only"))
    for call in (
        bob.beta.files.retrieve_metadata,
        lambda i: bob.beta.files.download(i).read(),
        bob.beta.files.delete,
    ):
        with pytest.raises(anthropic.NotFoundError) as exc:
            call(uploaded.id)
        assert uploaded.id in exc.value.message
    assert uploaded.id not in [f.id for f in bob.beta.files.list()]
    assert alice.beta.files.download(uploaded.id).read() == b"alice only"


def test_an_oversize_upload_is_a_413_and_leaves_nothing_behind(small_server: Server) -> None:
    client = small_server.client()
    for payload in (b"x" * (MiB + 1), os.urandom(20 * MiB)):
        with pytest.raises(anthropic.APIStatusError) as exc:
            client.beta.files.upload(file=("too_big.bin", payload))
        assert exc.value.status_code == 413
        assert exc.value.body == {  # type: ignore[comparison-overlap]
            "type": "error",
            "error": {"type": "request_too_large", "message": "Upload exceeds the maximum file size of 1048576 bytes."},
        }
    assert small_server.leftovers() == [] and list(client.beta.files.list()) == []
    ok = client.beta.files.upload(file=("fits.bin", b"y" * MiB))  # exactly the limit
    assert ok.size_bytes == MiB
    client.beta.files.delete(ok.id)


def test_malformed_uploads_are_400_invalid_request_errors(server: Server) -> None:
    base = f"{server.url}/v1/files"
    not_multipart = httpx2.post(base, content=b"{}", headers={"content-type": "application/json"})
    no_file_part = httpx2.post(base, data={"purpose": "x"}, files={"other": ("o.txt", b"o")})
    truncated = httpx2.post(
        base,
        content=b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="t.txt"\r\n\r\nabc',
        headers={"content-type": "multipart/form-data; boundary=XyZ"},
    )
    for response in (not_multipart, no_file_part, truncated):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert os.listdir(server.root / "tmp") == []


# --------------------------------------------------------------------------- names, listing, containers


def test_uploaded_filenames_are_sanitised_and_unicode_survives(server: Server) -> None:
    client = server.client("names")
    cases = {
        "../../etc/passwd": "passwd",
        "/abs/path/data.csv": "data.csv",
        'naïve "quoted" résumé.txt': 'naïve "quoted" résumé.txt',
        "a\\b\\c.txt": "c.txt",
    }
    for raw, clean in cases.items():
        uploaded = client.beta.files.upload(file=(raw, b"content"))
        assert uploaded.filename == clean, raw
        assert client.beta.files.retrieve_metadata(uploaded.id).filename == clean
    with httpx2.stream(
        "POST",
        f"{server.url}/v1/files",
        content=b'--B\r\nContent-Disposition: form-data; name="file"; filename="a\x00b.txt"\r\n\r\nz\r\n--B--\r\n',
        headers={"content-type": "multipart/form-data; boundary=B", "x-principal": "names"},
    ) as response:
        response.read()
    assert response.status_code == 200 and response.json()["filename"] == "ab.txt"


def test_concurrent_uploads_of_the_same_name_do_not_clobber(server: Server) -> None:
    client = server.client("racers")
    payloads = [f"writer {i}\n".encode() * 20_000 for i in range(8)]

    async def main() -> list[Any]:
        results: list[Any] = [None] * len(payloads)

        async def one(i: int) -> None:
            results[i] = await anyio.to_thread.run_sync(
                lambda: client.beta.files.upload(file=("same.csv", payloads[i]))
            )

        async with anyio.create_task_group() as tg:
            for i in range(len(payloads)):
                tg.start_soon(one, i)
        return results

    results = anyio.run(main)
    assert len({r.id for r in results}) == len(payloads)
    for meta, data in zip(results, payloads):
        assert meta.filename == "same.csv" and client.beta.files.download(meta.id).read() == data


def test_list_pages_newest_first_with_sdk_auto_pagination_and_cursors(server: Server) -> None:
    client = server.client("pager")
    ids = [client.beta.files.upload(file=(f"{i}.txt", str(i).encode())).id for i in range(5)]
    newest_first = ids[::-1]

    first = client.beta.files.list(limit=2)
    assert [f.id for f in first.data] == newest_first[:2] and first.has_next_page()
    assert [f.id for f in client.beta.files.list(limit=2)] == newest_first  # iterating fetches every page

    raw = httpx2.get(f"{server.url}/v1/files", params={"limit": 2}, headers={"x-principal": "pager"}).json()
    assert raw["has_more"] is True and raw["first_id"] == newest_first[0] and raw["last_id"] == newest_first[1]
    after = httpx2.get(
        f"{server.url}/v1/files", params={"limit": 2, "after_id": newest_first[1]}, headers={"x-principal": "pager"}
    ).json()
    assert [f["id"] for f in after["data"]] == newest_first[2:4] and after["has_more"] is True
    before = httpx2.get(
        f"{server.url}/v1/files", params={"limit": 2, "before_id": newest_first[4]}, headers={"x-principal": "pager"}
    ).json()
    assert [f["id"] for f in before["data"]] == newest_first[2:4] and before["has_more"] is True
    last = httpx2.get(
        f"{server.url}/v1/files", params={"limit": 10, "after_id": newest_first[2]}, headers={"x-principal": "pager"}
    ).json()
    assert [f["id"] for f in last["data"]] == newest_first[3:] and last["has_more"] is False
    assert last["next_page"] is None
    bad = httpx2.get(f"{server.url}/v1/files", params={"limit": 0}, headers={"x-principal": "pager"})
    assert bad.status_code == 400


def test_an_upload_naming_a_container_is_handed_to_on_upload(server: Server) -> None:
    client = server.client("attacher")
    uploaded = client.beta.files.upload(file=("in.csv", b"a\n1\n"), extra_query={"container_id": "ctr_1"})
    attached = [json.loads(line) for line in (server.root / "attached.jsonl").read_text().splitlines()]
    assert {"file_id": uploaded.id, "container_id": "ctr_1"} in attached
    listed = httpx2.get(
        f"{server.url}/v1/files", params={"container_id": "ctr_1"}, headers={"x-principal": "attacher"}
    ).json()
    assert [f["id"] for f in listed["data"]] == [uploaded.id]

    form = client.beta.files.upload(file=("in2.csv", b"b\n"), extra_body={"container_id": "ctr_2"})
    attached = [json.loads(line) for line in (server.root / "attached.jsonl").read_text().splitlines()]
    assert {"file_id": form.id, "container_id": "ctr_2"} in attached


def test_an_upload_to_a_container_that_cannot_take_it_is_undone(server: Server) -> None:
    client = server.client("attacher2")
    with pytest.raises(anthropic.NotFoundError) as exc:
        client.beta.files.upload(file=("in.csv", b"a\n"), extra_query={"container_id": "missing"})
    assert "missing" in exc.value.message
    assert list(client.beta.files.list()) == []


def test_files_survive_a_server_restart(tmp_path: Path) -> None:
    first = _start(tmp_path / "store", 10 * MiB)
    try:
        uploaded = first.client().beta.files.upload(file=("keep.txt", b"still here"))
    finally:
        _stop(first)
    second = _start(tmp_path / "store", 10 * MiB)
    try:
        client = second.client()
        assert client.beta.files.retrieve_metadata(uploaded.id) == uploaded
        assert client.beta.files.download(uploaded.id).read() == b"still here"
    finally:
        _stop(second)


# --------------------------------------------------------------------------- in-process ASGI (exact timing)


def _asgi_upload(app: Starlette, messages: list[dict[str, Any]], query: bytes = b"") -> list[dict[str, Any]]:
    """Drive one POST /v1/files through the ASGI app with the given receive messages."""
    sent: list[dict[str, Any]] = []
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/files",
        "raw_path": b"/v1/files",
        "query_string": query,
        "root_path": "",
        "headers": [
            (b"content-type", b"multipart/form-data; boundary=B"),
            (b"host", b"test"),
            (b"content-length", str(max(len(body), 1)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await anyio.sleep_forever()
        raise AssertionError  # pragma: no cover

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        await app(scope, receive, send)

    anyio.run(main)
    return sent


HEAD = b'--B\r\nContent-Disposition: form-data; name="file"; filename="up.bin"\r\n\r\n'


def test_an_upload_whose_client_disconnects_midway_leaves_nothing_behind(tmp_path: Path) -> None:
    with FileStore(tmp_path) as store:
        app = Starlette(routes=files_routes(store, lambda r: "p"))
        _asgi_upload(
            app,
            [
                {"type": "http.request", "body": HEAD + b"x" * (3 * MiB), "more_body": True},
                {"type": "http.request", "body": b"y" * MiB, "more_body": True},
                {"type": "http.disconnect"},
            ],
        )
        assert store.list() == [] and os.listdir(store.tmp_dir) == [] and os.listdir(store.blobs_dir) == []


def test_on_upload_receives_the_committed_record_and_container(tmp_path: Path) -> None:
    seen: list[tuple[FileRecord, str | None]] = []

    async def on_upload(record: FileRecord, container_id: str | None) -> None:
        seen.append((record, container_id))

    with FileStore(tmp_path) as store:
        app = Starlette(routes=files_routes(store, lambda r: "p", on_upload))
        body = HEAD + b"payload\r\n--B--\r\n"
        sent = _asgi_upload(app, [{"type": "http.request", "body": body, "more_body": False}], b"container_id=c9")
        assert sent[0]["status"] == 200
        file_id = json.loads(sent[1]["body"])["id"]
        record, container = seen[0]
        assert record == store.get(file_id) and container == "c9" and record.container_id == "c9"
        assert store.blob_path(file_id).read_bytes() == b"payload"
        # without a container the hook is not called
        _asgi_upload(app, [{"type": "http.request", "body": body, "more_body": False}])
        assert len(seen) == 1
