"""``mcp-codeexec files ls | get | rm | upload | prune`` over a real store in a temp data dir."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.files import FileRecord, FileStore
from mcp_codeexec.files_cli import _Progress, register_cli


class Cli:
    def __init__(self, data_dir: Path, attach=None) -> None:
        self.settings = Settings(data_dir=data_dir)
        self.parser = argparse.ArgumentParser(prog="mcp-codeexec")
        sub = self.parser.add_subparsers(dest="command", required=True)
        register_cli(sub, lambda: self.settings, attach)

    def __call__(self, *argv: str) -> int:
        ns = self.parser.parse_args(list(argv))
        return ns.func(ns)

    def store(self) -> FileStore:
        return FileStore(self.settings.files_dir, self.settings.file_retention_days)


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    return Cli(tmp_path / "data")


def _upload(cli: Cli, capsys: pytest.CaptureFixture[str], path: Path, *extra: str) -> str:
    assert cli("files", "upload", str(path), *extra) == 0
    return capsys.readouterr().out.strip()


def test_upload_prints_the_id_of_a_stored_upload(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"a,b\n1,2\n")
    file_id = _upload(cli, capsys, src)
    with cli.store() as store:
        rec = store.get(file_id)
    assert rec.filename == "in.csv" and rec.origin == "upload" and rec.principal == "local"
    assert rec.mime_type == "text/csv" and rec.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()


def test_get_writes_the_exact_bytes_to_a_file_or_directory(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    file_id = _upload(cli, capsys, src)
    out = tmp_path / "out.bin"
    assert cli("files", "get", file_id, "-o", str(out)) == 0
    assert out.read_bytes() == src.read_bytes()
    outdir = tmp_path / "dir"
    outdir.mkdir()
    assert cli("files", "get", file_id, "-o", str(outdir)) == 0
    assert (outdir / "blob.bin").read_bytes() == src.read_bytes()
    assert sorted(os.listdir(outdir)) == ["blob.bin"]  # no temp file left


def test_get_without_output_streams_to_stdout(cli: Cli, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    src = tmp_path / "b.bin"
    src.write_bytes(bytes(range(256)) * 10)
    assert cli("files", "upload", str(src)) == 0
    file_id = capsysbinary.readouterr().out.decode().strip()
    assert cli("files", "get", file_id) == 0
    assert capsysbinary.readouterr().out == src.read_bytes()


def test_get_refuses_bytes_that_do_not_match_the_stored_hash(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "t.txt"
    src.write_bytes(b"original")
    file_id = _upload(cli, capsys, src)
    with cli.store() as store:
        store.blob_path(file_id).write_bytes(b"tampered")
    out = tmp_path / "out.txt"
    assert cli("files", "get", file_id, "-o", str(out)) == 1
    assert not out.exists() and [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []
    assert "sha256 mismatch" in capsys.readouterr().err


def test_ls_lists_files_as_a_table_or_json_and_filters_by_container(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with cli.store() as store:
        a = store.add_bytes(b"1", filename="one.txt", origin="output", principal="alice", container_id="c1")
        b = store.add_bytes(b"22", filename="two.png", origin="upload", principal="local")
    assert cli("files", "ls") == 0
    table = capsys.readouterr().out
    assert a.id in table and b.id in table and "one.txt" in table and table.index(b.id) < table.index(a.id)
    assert cli("files", "ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [f["id"] for f in listed] == [b.id, a.id]
    assert listed[1]["container_id"] == "c1" and listed[1]["origin"] == "output" and listed[1]["sha256"] == a.sha256
    assert cli("files", "ls", "--container", "c1", "--json") == 0
    assert [f["id"] for f in json.loads(capsys.readouterr().out)] == [a.id]


def test_rm_deletes_and_reports_unknown_ids(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "x"
    src.write_bytes(b"x")
    file_id = _upload(cli, capsys, src)
    assert cli("files", "rm", file_id) == 0
    assert cli("files", "rm", file_id) == 1
    assert f"file not found: {file_id}" in capsys.readouterr().err
    with cli.store() as store:
        assert store.list() == []


def test_an_unknown_id_is_a_clear_error(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("files", "get", "file_nope") == 1
    assert "file not found: file_nope" in capsys.readouterr().err


def test_upload_with_container_calls_the_attach_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    calls: list[tuple[FileRecord, str]] = []
    cli = Cli(tmp_path / "data", attach=lambda record, container: calls.append((record, container)))
    src = tmp_path / "in.csv"
    src.write_bytes(b"a\n")
    file_id = _upload(cli, capsys, src, "--container", "ctr_7")
    assert [(r.id, c) for r, c in calls] == [(file_id, "ctr_7")] and calls[0][0].container_id == "ctr_7"


def test_a_failed_attach_undoes_the_upload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))

    def attach(record: FileRecord, container: str) -> None:
        raise LookupError(f"no container {container}")

    cli = Cli(tmp_path / "data", attach=attach)
    src = tmp_path / "in.csv"
    src.write_bytes(b"a\n")
    assert cli("files", "upload", str(src), "--container", "gone") == 1
    assert "no container gone" in capsys.readouterr().err
    with cli.store() as store:
        assert store.list() == []
    no_hook = Cli(tmp_path / "data")
    assert no_hook("files", "upload", str(src), "--container", "c") == 1


def test_upload_of_a_missing_path_fails_cleanly(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("files", "upload", str(tmp_path / "absent")) == 1
    assert "not a regular file" in capsys.readouterr().err


def test_prune_reports_how_many_files_it_removed(cli: Cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli("files", "prune") == 0
    assert capsys.readouterr().out.strip() == "0"


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_drawn_only_on_a_tty_and_only_for_large_transfers() -> None:
    tty = _Tty()
    bar = _Progress(64 * 1024 * 1024, "upload big.bin", stream=tty)
    bar.update(32 * 1024 * 1024, force=True)
    bar.close(64 * 1024 * 1024)
    assert "50.0%" in tty.getvalue() and "100.0%" in tty.getvalue() and tty.getvalue().endswith("\n")
    small, pipe = _Tty(), io.StringIO()
    _Progress(1024, "small", stream=small).close(1024)
    _Progress(64 * 1024 * 1024, "piped", stream=pipe).close(64 * 1024 * 1024)
    assert small.getvalue() == "" and pipe.getvalue() == ""


@pytest.mark.parametrize("argv", [["files", "ls"], ["files", "ls", "--json"], ["config"], ["--help"]])
def test_cli_output_into_a_closed_pipe_ends_quietly_without_a_traceback(tmp_path: Path, argv: list[str]) -> None:
    # `mcp-codeexec files ls | head -5`: the reader has gone before (or while) the CLI writes.
    data = tmp_path / "data"
    with FileStore(Settings(data_dir=data).files_dir) as store:
        for n in range(3):
            store.add_bytes(b"x", filename=f"f{n}.txt", origin="upload", principal="local")
    env = {**os.environ, "MCP_CODEEXEC_DATA_DIR": str(data), "MCP_CODEEXEC_CONFIG": str(tmp_path / "none.toml")}
    r, w = os.pipe()
    os.close(r)  # no reader: every write to stdout fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "mcp_codeexec", *argv], stdout=w, stderr=subprocess.PIPE,
                              env=env, timeout=60, check=False)
    finally:
        os.close(w)
    assert b"Traceback" not in proc.stderr and b"BrokenPipeError" not in proc.stderr, proc.stderr.decode()
    assert proc.returncode != 0 or argv == ["--help"]  # argparse itself ignores a failed write of its help
