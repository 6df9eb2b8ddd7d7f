"""The PostgreSQL store that N replicas share: migrations, files, ownership, pacing, sessions and
the leader lock, each exercised from two or more independent "replicas" (separate connections,
separate local directories) on a throwaway cluster (tests/support/postgres.py)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mcp_codeexec.database import SCHEMA_VERSION, connect, migrate
from mcp_codeexec.files import StoredFileNotFound
from mcp_codeexec.leader import LeaderElection
from mcp_codeexec.pg_store import PgCallRateLimiter, PgFileStore, PgOwnerRegistry, PgSessionLedger
from tests.support.clock import FakeClock

REPO = Path(__file__).resolve().parents[2]


def test_migrations_run_once_when_many_replicas_start_at_the_same_moment(postgres_url: str) -> None:
    def start() -> int:
        with connect(postgres_url) as conn:
            return migrate(conn)

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(lambda _: start(), range(8))) == [SCHEMA_VERSION] * 8
    with connect(postgres_url) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, SCHEMA_VERSION + 1))


def test_a_database_from_a_newer_release_is_refused_not_downgraded(postgres_url: str) -> None:
    with connect(postgres_url) as conn:
        migrate(conn)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
        with pytest.raises(RuntimeError, match="Upgrade mcp-codeexec"):
            migrate(conn)


def test_a_file_uploaded_on_one_replica_downloads_identical_on_another_and_a_delete_is_seen_by_both(
    postgres_url: str, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 11)  # several chunks
    with PgFileStore(postgres_url, tmp_path / "r1") as r1, PgFileStore(postgres_url, tmp_path / "r2") as r2:
        rec = r1.add_bytes(data, filename="big.bin", origin="upload", principal="alice")
        assert r2.get(rec.id, "alice") == rec
        with r2.open(rec.id, "alice") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == rec.sha256
        with pytest.raises(StoredFileNotFound):
            r2.get(rec.id, "mallory")
        assert [r.id for r in r2.list("alice")] == [rec.id]
        r1.delete(rec.id, "alice")
        with pytest.raises(StoredFileNotFound):
            r2.open(rec.id, "alice")
        assert not r2.blob_path(rec.id).exists()  # the cached copy goes too
        assert r1.stats() == r2.stats() == {"files": 0, "bytes": 0}
        with connect(postgres_url) as conn:  # no chunk outlives its file
            assert conn.execute("SELECT COUNT(*) FROM file_chunks").fetchone()[0] == 0


def test_concurrent_uploads_on_three_replicas_lose_nothing(postgres_url: str, tmp_path: Path) -> None:
    stores = [PgFileStore(postgres_url, tmp_path / f"r{i}") for i in range(3)]
    try:
        def upload(i: int) -> tuple[str, str]:
            body = f"file {i}".encode() * 1000
            rec = stores[i % 3].add_bytes(body, filename=f"f{i}.txt", origin="upload", principal="p")
            return rec.id, hashlib.sha256(body).hexdigest()

        with ThreadPoolExecutor(6) as pool:
            made = list(pool.map(upload, range(60)))
        assert len({fid for fid, _ in made}) == 60
        for n, (fid, digest) in enumerate(made):
            reader = stores[(n + 1) % 3]
            assert hashlib.sha256(reader.blob_path(fid).read_bytes()).hexdigest() == digest
        assert stores[0].stats("p")["files"] == 60
    finally:
        for s in stores:
            s.close()


def test_call_pacing_is_counted_once_across_replicas(postgres_url: str) -> None:
    clock = FakeClock()
    a = PgCallRateLimiter(postgres_url, per_minute=60, burst=4, clock=clock)
    b = PgCallRateLimiter(postgres_url, per_minute=60, burst=4, clock=clock)
    assert [a.admit("alice"), b.admit("alice"), a.admit("alice"), b.admit("alice")] == [0.0] * 4
    assert b.admit("alice") == pytest.approx(1.0)  # the burst is spent on both replicas together
    assert a.admit("alice") == pytest.approx(1.0)
    assert a.admit("bob") == 0.0  # buckets are per principal
    clock.now += 1.0
    assert b.admit("alice") == 0.0
    assert a.admit("alice") == pytest.approx(1.0)


def test_call_pacing_on_the_database_clock_admits_exactly_the_burst_under_concurrency(postgres_url: str) -> None:
    limiters = [PgCallRateLimiter(postgres_url, per_minute=1, burst=10) for _ in range(3)]
    with ThreadPoolExecutor(9) as pool:
        waits = list(pool.map(lambda i: limiters[i % 3].admit("p"), range(45)))
    assert sum(1 for w in waits if w == 0.0) == 10


def test_the_open_session_cap_holds_across_replicas(postgres_url: str) -> None:
    clock = FakeClock()
    a = PgSessionLedger(postgres_url, per_principal=2, idle_timeout=60, clock=clock)
    b = PgSessionLedger(postgres_url, per_principal=2, idle_timeout=60, clock=clock)
    a.opened("alice", "s1")
    assert not b.at_cap("alice")
    b.opened("alice", "s2")
    assert a.at_cap("alice") and b.at_cap("alice")
    assert not a.begin("mallory", "s1")  # not hers
    assert b.begin("alice", "s1")  # a request for a session opened on the other replica
    clock.now += 120
    assert a.open_count("alice") == 1  # s2 expired idle; s1 is in flight
    a.end("alice", "s1", gone=True)
    assert b.open_count("alice") == 0


def test_sandbox_owner_records_are_shared_by_replicas(postgres_url: str, tmp_path: Path) -> None:
    a = PgOwnerRegistry(postgres_url, tmp_path / "a")
    b = PgOwnerRegistry(postgres_url, tmp_path / "b")
    now = time.time()
    a.set("container_x", "alice", created=now, expires=now + 60, quota="loop", mounts="/m")
    assert b.get("container_x") == "alice"
    assert b.revivable("container_x")["mounts"] == "/m"  # type: ignore[index]
    assert b.ids() == ["container_x"]
    b.forget("container_x")
    assert a.record("container_x") is None


def test_exactly_one_replica_leads(postgres_url: str) -> None:
    electors = [LeaderElection(postgres_url, interval=0.2).start() for _ in range(3)]
    try:
        time.sleep(0.6)
        assert sum(e.is_leader() for e in electors) == 1
        leader = next(e for e in electors if e.is_leader())
        leader.stop()  # a clean hand-over
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(e.is_leader() for e in electors if e is not leader):
            time.sleep(0.05)
        assert sum(e.is_leader() for e in electors if e is not leader) == 1
    finally:
        for e in electors:
            e.stop()


def test_a_killed_leader_is_replaced_within_seconds(postgres_url: str) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from mcp_codeexec.leader import LeaderElection
        e = LeaderElection({postgres_url!r}, interval=0.2).start()
        print("leader" if e.is_leader() else "follower", flush=True)
        time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    follower = None
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "leader"
        follower = LeaderElection(postgres_url, interval=0.2).start()
        time.sleep(0.5)
        assert not follower.is_leader()
        proc.send_signal(signal.SIGKILL)  # no clean-up: the database notices the closed socket
        killed = time.monotonic()
        while not follower.is_leader() and time.monotonic() - killed < 10:
            time.sleep(0.02)
        took = time.monotonic() - killed
        assert follower.is_leader(), "no replica took over"
        assert took < 3.0, f"hand-over took {took:.2f} s"
        print(f"leader hand-over after kill -9: {took:.2f} s")
    finally:
        proc.kill()
        proc.wait()
        if follower is not None:
            follower.stop()


def test_a_skill_uploaded_on_one_replica_loads_on_another(postgres_url: str, tmp_path: Path) -> None:
    from mcp_codeexec.pg_store import PgSkillStore

    md = b"---\nname: s\ndescription: x\n---\n"
    a, b = PgSkillStore(postgres_url, tmp_path / "a"), PgSkillStore(postgres_url, tmp_path / "b")
    row, _ = a.create("alice", "s", "x", [("SKILL.md", 0o644, md), ("run.sh", 0o755, b"echo hi")], "S")
    loaded = {p: (m, d) for p, m, d in b.resolve(row.id, "latest", "alice").load()}
    assert loaded == {"SKILL.md": (0o644, md), "run.sh": (0o755, b"echo hi")}
    assert [s.skill_id for s in b.latest_skills("alice")] == [row.id] and b.latest_skills("bob") == []
    b.delete(row.id, "alice")
    assert a.list(None, 10, 0) == []
    with connect(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) FROM skill_blobs").fetchone()[0] == 0


def test_a_store_reconnects_after_its_connection_was_cut(postgres_url: str, tmp_path: Path) -> None:
    from mcp_codeexec.errors import Unavailable

    with PgFileStore(postgres_url, tmp_path / "r") as store:
        rec = store.add_bytes(b"x", filename="a", origin="upload", principal="p")
        with connect(postgres_url) as admin:  # the database ends every other session (a restart, a failover)
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        with pytest.raises(Unavailable, match="shared database is unreachable"):
            store.get(rec.id)  # the call that meets the cut fails (answered `unavailable`) ...
        assert store.get(rec.id) == rec  # ... and the next one reconnects
