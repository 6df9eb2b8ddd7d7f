"""The file store: ids, persistence, ownership, retention, sanitising, atomic writes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import re
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mcp_codeexec.files import (
    FileRecord,
    FileStore,
    FileTooLarge,
    StoredFileNotFound,
    guess_mime,
    sanitize_filename,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256))


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Each test of the store's contract runs against both implementations."""
    if request.param == "postgres":
        from mcp_codeexec.pg_store import PgFileStore

        s: FileStore = PgFileStore(request.getfixturevalue("postgres_url"), tmp_path / "files", retention_days=30)
    else:
        s = FileStore(tmp_path / "files", retention_days=30)
    yield s
    s.close()


def _file_metadata_model():
    import anthropic.types.beta as beta

    return getattr(beta, "BetaFileMetadata", None) or beta.FileMetadata  # SDK 2.x / 0.x name


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for d in ("blobs", "tmp") for p in (root / d).iterdir())


# --------------------------------------------------------------------------- ids and records


def test_ids_are_file_prefixed_24_random_alphanumerics_and_unique(store: FileStore) -> None:
    ids = {store.add_bytes(b"x", filename="a", origin="upload", principal="p").id for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"file_[A-Za-z0-9]{24}", i) for i in ids)


def test_a_stored_file_reads_back_identical_with_its_metadata(store: FileStore) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    before = datetime.now(UTC)
    rec = store.add_bytes(data, filename="blob.bin", origin="output", principal="p", container_id="c1")
    assert rec.size == len(data) and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert rec.origin == "output" and rec.container_id == "c1" and rec.principal == "p" and rec.downloadable
    assert rec.created_at.tzinfo is not None and before <= rec.created_at <= datetime.now(UTC)
    assert store.get(rec.id) == rec
    with store.open(rec.id) as fh:
        assert fh.read() == data
    chunks = list(store.iter_chunks(rec.id, chunk=1024 * 1024))
    assert [len(c) for c in chunks] == [1024 * 1024] * 3 + [7] and b"".join(chunks) == data
    assert store.blob_path(rec.id).read_bytes() == data
    assert store.blob_path(rec.id).parent == store.blobs_dir


def test_to_api_is_a_valid_anthropic_file_object(store: FileStore) -> None:
    rec = store.add_bytes(b"a,b\n1,2\n", filename="data.csv", origin="upload", principal="p")
    api = rec.to_api()
    assert api["type"] == "file" and api["size_bytes"] == 8 and api["mime_type"] == "text/csv"
    assert api["created_at"].endswith("Z")
    parsed = _file_metadata_model().model_validate(api)
    assert parsed.id == rec.id and parsed.created_at == rec.created_at and parsed.downloadable is True


def test_files_survive_reopening_the_store(tmp_path: Path) -> None:
    s1 = FileStore(tmp_path, retention_days=30)
    rec = s1.add_bytes(b"persist me", filename="p.txt", origin="upload", principal="p")
    s1.close()
    s2 = FileStore(tmp_path, retention_days=30)
    try:
        assert s2.get(rec.id) == rec
        assert s2.blob_path(rec.id).read_bytes() == b"persist me"
        assert [r.id for r in s2.list()] == [rec.id]
        assert s2.add_bytes(b"2", filename="q", origin="upload", principal="p").id != rec.id
    finally:
        s2.close()


def test_add_path_copies_the_file_under_its_own_name(store: FileStore, tmp_path: Path) -> None:
    src = tmp_path / "report.pdf"
    src.write_bytes(b"%PDF-1.7\n" + os.urandom(5000))
    rec = store.add_path(src, origin="upload", principal="p")
    assert rec.filename == "report.pdf" and rec.mime_type == "application/pdf"
    assert store.blob_path(rec.id).read_bytes() == src.read_bytes()
    assert store.add_path(src, filename="renamed.pdf", origin="upload", principal="p").filename == "renamed.pdf"


def test_a_given_file_id_is_used_once_and_never_overwritten(store: FileStore) -> None:
    rec = store.add_bytes(b"hosted", filename="h.txt", origin="hosted", principal="p", file_id="file_011CNha8iCJc")
    assert rec.id == "file_011CNha8iCJc" and store.get(rec.id).origin == "hosted"
    with pytest.raises(FileExistsError):
        store.add_bytes(b"other", filename="h.txt", origin="hosted", principal="p", file_id=rec.id)
    assert store.blob_path(rec.id).read_bytes() == b"hosted"
    with pytest.raises(ValueError):
        store.begin(filename="x", origin="hosted", principal="p", file_id="../escape")


# --------------------------------------------------------------------------- ownership and lookup


def test_unknown_and_foreign_ids_raise_the_same_not_found(store: FileStore) -> None:
    rec = store.add_bytes(b"mine", filename="m", origin="upload", principal="alice")
    unknown = "file_" + "A" * 24
    for call in (store.get, store.open, store.iter_chunks, store.delete):
        with pytest.raises(StoredFileNotFound) as foreign:
            call(rec.id, "bob")
        with pytest.raises(StoredFileNotFound) as missing:
            call(unknown, "bob")
        assert isinstance(foreign.value, KeyError) and type(foreign.value) is type(missing.value)
    assert store.get(rec.id, "alice") == rec and store.get(rec.id) == rec  # owner, and no check
    assert store.blob_path(rec.id).exists()  # bob's delete did nothing


def test_ids_with_path_syntax_are_not_found(store: FileStore) -> None:
    for bad in ("../files.db", "file_../../etc/passwd", "file_a/b", "", "file_", "file_" + "a" * 200):
        with pytest.raises(StoredFileNotFound):
            store.get(bad)
        with pytest.raises(StoredFileNotFound):
            store.blob_path(bad)


def test_list_is_newest_first_and_filters_by_principal_and_container(store: FileStore) -> None:
    a = store.add_bytes(b"1", filename="1", origin="upload", principal="alice", container_id="c1")
    b = store.add_bytes(b"2", filename="2", origin="output", principal="bob", container_id="c1")
    c = store.add_bytes(b"3", filename="3", origin="output", principal="alice", container_id="c2")
    assert [r.id for r in store.list()] == [c.id, b.id, a.id]
    assert [r.id for r in store.list(principal="alice")] == [c.id, a.id]
    assert [r.id for r in store.list(container_id="c1")] == [b.id, a.id]
    assert [r.id for r in store.list(principal="alice", container_id="c1")] == [a.id]
    assert [r.id for r in store.list(origin="output")] == [c.id, b.id]
    assert [r.id for r in store.list(ids=[a.id, "file_nope", c.id])] == [c.id, a.id]


def test_list_pages_with_after_and_before_cursors(store: FileStore) -> None:
    recs = [store.add_bytes(b"x", filename=str(i), origin="upload", principal="p") for i in range(7)]
    newest_first = [r.id for r in reversed(recs)]
    assert [r.id for r in store.list(limit=3)] == newest_first[:3]
    assert [r.id for r in store.list(limit=3, after_id=newest_first[2])] == newest_first[3:6]
    assert [r.id for r in store.list(limit=3, after_id=newest_first[5])] == newest_first[6:]
    assert [r.id for r in store.list(limit=2, before_id=newest_first[5])] == newest_first[3:5]
    assert [r.id for r in store.list(limit=None)] == newest_first
    other = store.add_bytes(b"x", filename="o", origin="upload", principal="q")
    with pytest.raises(StoredFileNotFound):  # another principal's id is no cursor
        store.list(principal="p", after_id=other.id)


# --------------------------------------------------------------------------- deletion and retention


def test_delete_removes_row_and_blob(store: FileStore) -> None:
    rec = store.add_bytes(b"bye", filename="b", origin="upload", principal="p")
    assert store.delete(rec.id, "p") == rec
    assert not store.blob_path(rec.id).exists() and store.list() == []
    with pytest.raises(StoredFileNotFound):
        store.get(rec.id)
    with pytest.raises(StoredFileNotFound):
        store.delete(rec.id)


def test_a_handle_opened_before_delete_still_reads_the_bytes(store: FileStore) -> None:
    rec = store.add_bytes(b"still here", filename="s", origin="upload", principal="p")
    with store.open(rec.id) as fh:
        store.delete(rec.id)
        assert fh.read() == b"still here"


def test_prune_deletes_only_files_past_retention(tmp_path: Path) -> None:
    with FileStore(tmp_path, retention_days=30) as s:
        old = s.add_bytes(b"old", filename="o", origin="output", principal="p")
        young = s.add_bytes(b"young", filename="y", origin="upload", principal="p")
        assert old.created_at < young.created_at
        # the moment `young` turns exactly 30 days old: `old` is past retention, `young` is not yet
        assert s.prune(now=young.created_at + timedelta(days=30)) == 1
        assert [r.id for r in s.list()] == [young.id]
        assert not s.blob_path(old.id).exists() and s.blob_path(young.id).read_bytes() == b"young"


def test_prune_keeps_files_younger_than_retention(tmp_path: Path) -> None:
    with FileStore(tmp_path, retention_days=2) as s:
        recs = [s.add_bytes(b"k", filename=str(i), origin="upload", principal="p") for i in range(3)]
        assert s.prune(now=datetime.now(UTC) + timedelta(days=1)) == 0
        assert {r.id for r in s.list()} == {r.id for r in recs}
        assert s.prune(now=datetime.now(UTC) + timedelta(days=3)) == 3
        assert s.list() == [] and _leftovers(tmp_path) == []


def test_without_retention_prune_keeps_everything(tmp_path: Path) -> None:
    with FileStore(tmp_path, retention_days=None) as s:
        rec = s.add_bytes(b"forever", filename="f", origin="upload", principal="p")
        assert s.prune(now=datetime.now(UTC) + timedelta(days=10_000)) == 0
        assert s.get(rec.id) == rec


def test_prune_removes_files_past_an_expiry_their_uploader_set(tmp_path: Path) -> None:
    with FileStore(tmp_path, retention_days=None) as s:
        soon = datetime.now(UTC) + timedelta(hours=1)
        rec = s.add_bytes(b"e", filename="e", origin="upload", principal="p", expires_at=soon)
        assert rec.to_api()["expires_at"].endswith("Z")
        assert s.prune(now=soon - timedelta(seconds=1)) == 0
        assert s.prune(now=soon) == 1


def test_prune_cleans_stale_temp_files_and_nothing_else(tmp_path: Path) -> None:
    with FileStore(tmp_path, retention_days=30) as s:
        rec = s.add_bytes(b"keep", filename="k", origin="upload", principal="p")
        stale, fresh = s.tmp_dir / "file_x.abc.part", s.tmp_dir / "file_y.def.part"
        stale.write_bytes(b"abandoned")
        fresh.write_bytes(b"in progress")
        day_ago = datetime.now(UTC).timestamp() - 2 * 24 * 3600
        os.utime(stale, (day_ago, day_ago))
        stray = tmp_path / "notes.txt"
        stray.write_text("not the store's")
        assert s.prune() == 0
        assert not stale.exists() and fresh.exists() and stray.exists() and s.get(rec.id) == rec


# --------------------------------------------------------------------------- writing: atomicity, limits, races


def test_an_aborted_write_leaves_nothing_behind(store: FileStore) -> None:
    pending = store.begin(filename="half.bin", origin="upload", principal="p")
    pending.write(b"x" * 100_000)
    assert _leftovers(store.root) != []  # the temp file exists while writing
    pending.abort()
    assert _leftovers(store.root) == [] and store.list() == []
    with pytest.raises(ValueError):
        pending.write(b"more")


def test_an_exception_inside_the_context_manager_aborts(store: FileStore) -> None:
    with pytest.raises(RuntimeError):
        with store.begin(filename="f", origin="upload", principal="p") as pending:
            pending.write(b"partial")
            raise RuntimeError("connection lost")
    with store.begin(filename="g", origin="upload", principal="p") as pending:
        pending.write(b"never committed")
    assert _leftovers(store.root) == [] and store.list() == []


def test_a_write_past_max_size_raises_and_leaves_nothing(store: FileStore) -> None:
    pending = store.begin(filename="big", origin="output", principal="p", max_size=10)
    pending.write(b"0123456789")  # exactly the limit is fine
    with pytest.raises(FileTooLarge) as exc:
        pending.write(b"!")
    assert isinstance(exc.value, ValueError) and exc.value.limit == 10
    assert pending.closed and _leftovers(store.root) == [] and store.list() == []
    with pytest.raises(FileTooLarge):
        store.add_bytes(b"x" * 11, filename="big", origin="output", principal="p", max_size=10)
    assert _leftovers(store.root) == []
    assert store.add_bytes(b"x" * 10, filename="ok", origin="output", principal="p", max_size=10).size == 10


def test_a_commit_that_fails_leaves_no_blob(tmp_path: Path) -> None:
    s = FileStore(tmp_path)
    pending = s.begin(filename="f", origin="upload", principal="p")
    pending.write(b"data")
    s.close()
    with pytest.raises(ValueError):
        pending.commit()
    assert _leftovers(tmp_path) == []


def test_concurrent_uploads_of_the_same_name_get_distinct_ids_and_keep_their_bytes(store: FileStore) -> None:
    barrier = threading.Barrier(16)

    def upload(i: int) -> tuple[FileRecord, bytes]:
        data = f"writer {i}\n".encode() * (1000 + i)
        with store.begin(filename="data.csv", origin="upload", principal="p") as pending:
            barrier.wait()
            for start in range(0, len(data), 4096):
                pending.write(data[start : start + 4096])
            return pending.commit(), data

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(upload, range(16)))
    assert len({rec.id for rec, _ in results}) == 16
    for rec, data in results:
        assert rec.filename == "data.csv"
        assert store.blob_path(rec.id).read_bytes() == data and rec.sha256 == hashlib.sha256(data).hexdigest()
    assert len(store.list(limit=None)) == 16 and os.listdir(store.tmp_dir) == []


def test_two_store_objects_on_one_root_see_each_others_writes(tmp_path: Path) -> None:
    with FileStore(tmp_path) as server, FileStore(tmp_path) as cli:
        rec = cli.add_bytes(b"from the cli", filename="c", origin="upload", principal="local")
        assert server.get(rec.id) == rec
        server.delete(rec.id)
        with pytest.raises(StoredFileNotFound):
            cli.get(rec.id)


def _open_fresh_stores(barrier, jobs, results) -> None:
    """A worker: for each root it is given, wait for every worker, then open and close a store there."""
    while (root := jobs.get()) is not None:
        barrier.wait()
        try:
            FileStore(root).close()
            results.put(None)
        except (sqlite3.Error, OSError, RuntimeError) as exc:  # the finding, reported to the parent
            results.put(f"{type(exc).__name__}: {exc}")


def test_one_fresh_store_opened_by_8_processes_at_once_never_fails(tmp_path: Path) -> None:
    # Claude Desktop, Claude Code and Cursor each start a stdio server on the same data dir, often together.
    procs, rounds = 8, 50
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    queues = [ctx.Queue() for _ in range(procs)]
    workers = [ctx.Process(target=_open_fresh_stores, args=(barrier, q, results)) for q in queues]
    for w in workers:
        w.start()
    failures: list[str] = []
    try:
        for n in range(rounds):
            root = tmp_path / f"round{n}"
            for q in queues:
                q.put(str(root))
            failures += [r for r in (results.get(timeout=60) for _ in range(procs)) if r is not None]
            with FileStore(root) as store:  # every round ends with one usable, versioned store
                assert store.list() == []
    finally:
        for q in queues:
            q.put(None)
        for w in workers:
            w.join(timeout=30)
    assert failures == [], f"{len(failures)} of {procs * rounds} opens failed: {sorted(set(failures))}"


# --------------------------------------------------------------------------- names and types


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../x", "x"),
        ("../../etc/passwd", "passwd"),
        ("/etc/passwd", "passwd"),
        ("a\x00b", "ab"),
        ("..", "file"),
        (".", "file"),
        ("", "file"),
        ("   ", "file"),
        ("dir/", "file"),
        ("C:\\Users\\me\\report.xlsx", "report.xlsx"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("line\nbreak\r.txt", "linebreak.txt"),
        ("evil\u202etxt.exe", "eviltxt.exe"),
        ("données 2024.csv", "données 2024.csv"),
        (".hidden", ".hidden"),
        (b"bytes\xffname", "bytes\ufffdname"),
    ],
)
def test_sanitize_filename_neutralises_paths_and_control_characters(raw: str | bytes, clean: str) -> None:
    assert sanitize_filename(raw) == clean


def test_sanitize_filename_caps_names_at_255_utf8_bytes_keeping_the_extension() -> None:
    long = "é" * 300 + ".csv"
    out = sanitize_filename(long)
    assert len(out.encode()) <= 255 and out.endswith(".csv") and out.startswith("ééé")
    out.encode().decode("utf-8")  # cut on a character boundary
    assert len(sanitize_filename("x" * 1000).encode()) == 255


def test_stored_filenames_are_sanitised(store: FileStore) -> None:
    rec = store.add_bytes(b"x", filename="../../etc/passwd", origin="upload", principal="p")
    assert rec.filename == "passwd" and store.blob_path(rec.id).name == rec.id


@pytest.mark.parametrize(
    ("name", "head", "mime"),
    [
        ("chart.png", PNG, "image/png"),
        ("chart", PNG, "image/png"),
        ("mislabelled.txt", PNG, "image/png"),
        ("photo.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        ("anim.gif", b"GIF89a\x01\x00", "image/gif"),
        ("pic.webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        ("doc", b"%PDF-1.4\n", "application/pdf"),
        ("archive.zip", b"PK\x03\x04rest", "application/zip"),
        ("sheet.xlsx", b"PK\x03\x04rest", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        ("data.csv", b"a,b\n", "text/csv"),
        ("notes.txt", b"hello", "text/plain"),
        ("README.md", b"# hi", "text/markdown"),
        ("out.json", b"{}", "application/json"),
        ("script.py", b"print()", "text/x-python"),
        ("page.html", b"<html>", "text/html"),
        ("data.csv.gz", b"\x1f\x8b\x08", "application/gzip"),
        ("Makefile", b"all:\n\techo hi\n", "text/plain"),
        ("blob", b"\x00\x01\x02\xff", "application/octet-stream"),
        ("weird.qqq", b"abc", "application/octet-stream"),
        ("empty", b"", "application/octet-stream"),
    ],
)
def test_guess_mime_uses_magic_bytes_then_the_name(name: str, head: bytes, mime: str) -> None:
    assert guess_mime(name, head) == mime


def test_an_explicit_mime_type_is_kept_and_a_missing_one_is_sniffed(store: FileStore) -> None:
    assert store.add_bytes(PNG, filename="x", origin="output", principal="p").mime_type == "image/png"
    given = store.add_bytes(b"{}", filename="x", origin="output", principal="p", mime_type="application/vnd.custom")
    assert given.mime_type == "application/vnd.custom"
