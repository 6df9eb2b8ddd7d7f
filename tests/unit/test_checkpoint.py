"""checkpoint.py without an engine: the runsc 2022 state repair, the start-time guard, the retries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import docker
import pytest

from mcp_codeexec import checkpoint
from mcp_codeexec.checkpoint import PREFIX, Checkpointer, _started_ns

CID = "c" * 64


class FakeResponse:
    def __init__(self, status: int = 200, body: Any = None) -> None:
        self.status_code, self._body = status, body

    def json(self) -> Any:
        return self._body


class FakeAPI:
    """Just the docker-py APIClient calls checkpoint.py makes."""

    def __init__(self, names: list[str], started: str, start_errors: list[str]) -> None:
        self.names, self.started, self.start_errors = names, started, start_errors
        self.starts: list[dict[str, Any]] = []
        self.plain_starts = 0

    def _url(self, path: str, *args: str) -> str:
        return path.format(*args)

    def _get(self, url: str) -> FakeResponse:
        return FakeResponse(body=[{"Name": n} for n in self.names])

    def _delete(self, url: str) -> FakeResponse:
        self.names.remove(url.rsplit("/", 1)[1])
        return FakeResponse()

    def _post(self, url: str, params: dict[str, Any]) -> FakeResponse:
        self.starts.append(params)
        if self.start_errors:
            raise docker.errors.APIError("500", explanation=self.start_errors.pop(0))
        return FakeResponse()

    def _raise_for_status(self, response: FakeResponse) -> None:
        pass

    def inspect_container(self, cid: str) -> dict[str, Any]:
        return {"Id": CID, "State": {"StartedAt": self.started, "Running": False}}

    def start(self, cid: str) -> None:
        self.plain_starts += 1


class FakeClient:
    def __init__(self, api: FakeAPI) -> None:
        self.api = api


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    monkeypatch.setattr(checkpoint, "RETRY_PAUSE", 0)
    monkeypatch.setattr(checkpoint, "RUNSC_ROOTS", (Path("/nonexistent-runsc-root"),))


def test_the_engines_start_time_parses_to_nanoseconds() -> None:
    api = FakeAPI([], "2026-12-01T23:29:27.420387731Z", [])
    assert _started_ns(FakeClient(api), CID) == 1796167767420387731
    api.started = "0001-01-01T00:00:00Z"
    assert _started_ns(FakeClient(api), CID) == 0


def test_a_restore_is_retried_while_the_engine_cleans_up_and_its_checkpoint_deleted_after() -> None:
    api = FakeAPI([f"{PREFIX}1796167767420387731"], "2026-12-01T23:00:00Z",
                  ["id already in use", "commit failed: content sha256:ab: already exists"])
    assert Checkpointer(FakeClient(api), enabled=True).start(CID) is True
    assert len(api.starts) == 3 and api.names == [] and api.plain_starts == 0


def test_a_restore_that_fails_otherwise_falls_back_to_a_plain_start() -> None:
    api = FakeAPI([f"{PREFIX}1796167767420387731"], "2026-12-01T23:00:00Z", ["restore failed: bad image"])
    assert Checkpointer(FakeClient(api), enabled=True).start(CID) is False
    assert len(api.starts) == 1 and api.names == [] and api.plain_starts == 1


def test_a_checkpoint_older_than_the_last_start_is_discarded_not_restored() -> None:
    api = FakeAPI([f"{PREFIX}1796167767420387731"], "2026-12-01T23:59:00Z", [])
    assert Checkpointer(FakeClient(api), enabled=True).start(CID) is False
    assert api.starts == [] and api.names == [] and api.plain_starts == 1


def test_a_dead_sandbox_runsc_calls_paused_is_marked_running_and_deleted(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint, "RUNSC_ROOTS", (tmp_path,))
    state = tmp_path / f"{CID}_sandbox:{CID}.state"
    state.write_text(json.dumps({"id": CID, "status": "paused", "sandbox": {"pid": 2**22 + 12345}}, separators=(",", ":")))
    calls = tmp_path / "calls"
    fake_runsc = tmp_path / "runsc"
    fake_runsc.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake_runsc.chmod(0o755)
    Checkpointer(FakeClient(FakeAPI([], "", [])), enabled=True, runsc_path=str(fake_runsc))._repair(CID)
    assert json.loads(state.read_text())["status"] == "running"
    assert calls.read_text().split() == ["--root", str(tmp_path), "delete", "--force", CID]


def test_a_live_paused_sandbox_is_left_alone(tmp_path, monkeypatch) -> None:
    import os

    monkeypatch.setattr(checkpoint, "RUNSC_ROOTS", (tmp_path,))
    state = tmp_path / f"{CID}_sandbox:{CID}.state"
    text = json.dumps({"id": CID, "status": "paused", "sandbox": {"pid": os.getpid()}}, separators=(",", ":"))
    state.write_text(text)
    Checkpointer(FakeClient(FakeAPI([], "", [])), enabled=True, runsc_path="/bin/false")._repair(CID)
    assert state.read_text() == text
