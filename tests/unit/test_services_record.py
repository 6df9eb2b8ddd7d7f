"""The services record `containers ls` reads (services.py): written by the server after each
services op, read by another process, never by asking the agent."""

from __future__ import annotations

from pathlib import Path

from mcp_codeexec.services import read_record, record_path, write_record

ROWS = [
    {"name": "web", "pid": 9, "status": "running", "exit_code": None, "uptime_seconds": 1.0, "started_at": 1000.0,
     "command": "sleep 600", "output_bytes": 5},
    {"name": "job", "pid": 12, "status": "exited", "exit_code": 4, "uptime_seconds": 0.2, "started_at": 1001.0,
     "command": "exit 4"},
]


def test_a_running_services_uptime_is_brought_up_to_now_and_an_exited_ones_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mcp_codeexec.services.time.time", lambda: 1010.0)
    write_record(tmp_path, "container_x", ROWS)
    found = read_record(tmp_path, "container_x", started_at=900.0, now=1070.0)
    assert found is not None and found["as_of_seconds"] == 60.0
    web, job = found["services"]
    assert web["uptime_seconds"] == 70.0 and "output_bytes" not in web
    assert job["uptime_seconds"] == 0.2 and job["exit_code"] == 4


def test_a_record_older_than_the_containers_start_or_unreadable_shows_no_services(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("mcp_codeexec.services.time.time", lambda: 1010.0)
    write_record(tmp_path, "container_x", ROWS)
    assert read_record(tmp_path, "container_x", started_at=1020.0) is None  # restarted: its services died
    assert read_record(tmp_path, "container_y", started_at=None) is None
    record_path(tmp_path, "container_x").write_text("{not json")
    assert read_record(tmp_path, "container_x", started_at=None) is None
