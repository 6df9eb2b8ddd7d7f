"""Three HTTP replicas on one Docker engine sharing one PostgreSQL database, driven by real clients
that alternate between them: the anthropic SDK's Files client, the MCP Python client and raw
session-less (2026-07-28) requests. One world: files uploaded on one replica download on another,
a container made through one is used through the others by container_id, pacing is counted once,
and a replica killed mid-call costs the client one clear error, nothing else."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import docker
import httpx2
import psycopg
import pytest

from mcp_codeexec.config import Settings
from mcp_codeexec.engines.docker import L_ID, L_INSTALL, L_MANAGED, installation_label
from tests.integration.conftest import make_settings
from tests.support.http_probe import legacy_call, modern_call, rpc_payload, tool_result
from tests.support.servers import free_port, mcp_client, new_token, remove_installation, server_env

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(self, settings: Settings, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = server_env(settings, MCP_CODEEXEC_AUTH_TOKENS=token, PYTHONPATH=str(REPO))
        args = [sys.executable, "-m", "mcp_codeexec", "serve", "--transport", "http", "--port", str(self.port)]
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"replica exited: {self.proc.stderr.read().decode()[-3000:]}")  # type: ignore[union-attr]
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return
            time.sleep(0.05)
        raise TimeoutError(f"replica on {self.port} did not listen")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.contextmanager
def replicas(settings: Settings, token: str, n: int = 3) -> Iterator[list[Replica]]:
    started = [Replica(settings, token) for _ in range(n)]  # at once: migrations race on purpose
    try:
        for r in started:
            r.wait_ready()
        yield started
    finally:
        for r in started:
            r.stop()


@pytest.fixture
def shared(tmp_path: Path, docker_engine: None, postgres_url: str) -> Iterator[Settings]:
    s = make_settings(tmp_path, database_url=postgres_url)
    yield s
    remove_installation(s)


def _our_containers(settings: Settings) -> set[str]:
    client = docker.from_env()
    try:
        found = client.containers.list(all=True, ignore_removed=True, filters={
            "label": [f"{L_MANAGED}=1", f"{L_INSTALL}={installation_label(settings.data_dir)}"]})
        return {c.labels.get(L_ID, c.name) for c in found}
    finally:
        client.close()


def _stateless(url: str, token: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    with httpx2.Client(timeout=120) as http:
        return tool_result(modern_call(http, url, token, tool, arguments))


async def test_a_client_alternating_three_replicas_sees_one_world(shared: Settings) -> None:
    token = new_token()
    with replicas(shared, token) as (r1, r2, r3):
        # a container made through replica 1 (MCP Python client, handshake session)
        async with mcp_client("http", shared, base_url=r1.url, token=token) as client:
            first = await client.call_tool("bash_code_execution", {"command": "echo made-on-1 > /workspace/mark"})
            cid = first.meta["container"]["id"]

        # an upload on replica 1 (anthropic SDK) into that container, downloaded on replica 2
        payload = os.urandom(2 * 1024 * 1024 + 5)
        sdk1 = anthropic.Anthropic(api_key=token, base_url=r1.url, max_retries=0)
        sdk2 = anthropic.Anthropic(api_key=token, base_url=r2.url, max_retries=0)
        sdk3 = anthropic.Anthropic(api_key=token, base_url=r3.url, max_retries=0)
        up = await anyio.to_thread.run_sync(
            lambda: sdk1.beta.files.upload(file=("blob.bin", payload, "application/octet-stream"),
                                           extra_query={"container_id": cid}))
        down = await anyio.to_thread.run_sync(lambda: sdk2.beta.files.download(up.id).read())
        assert down == payload
        assert (await anyio.to_thread.run_sync(lambda: sdk3.beta.files.retrieve_metadata(up.id))).size_bytes == len(payload)

        # the same container through replica 2 (MCP client, its own session) by container_id
        async with mcp_client("http", shared, base_url=r2.url, token=token) as client:
            used = await client.call_tool("bash_code_execution", {
                "command": "cat /workspace/mark && sha256sum /workspace/inputs/blob.bin | cut -c1-64", "container_id": cid})
            assert used.structured_content["stdout"].split() == ["made-on-1", hashlib.sha256(payload).hexdigest()]
            assert used.meta["container"]["id"] == cid

        # and through replica 3, session-less (2026-07-28), writing an output file
        res = await anyio.to_thread.run_sync(lambda: _stateless(r3.url, token, "bash_code_execution", {
            "command": "cat /workspace/mark; echo out-3 > $OUTPUT_DIR/out.txt", "container_id": cid}))
        sc = res["structuredContent"]
        assert sc["stdout"] == "made-on-1\n", sc
        out_id = sc["content"][0]["file_id"]
        assert (await anyio.to_thread.run_sync(lambda: sdk1.beta.files.download(out_id).read())) == b"out-3\n"

        # session-less calls on each replica in turn land in the same container
        for n, r in enumerate((r1, r2, r3, r1, r2, r3)):
            res = await anyio.to_thread.run_sync(lambda r=r, n=n: _stateless(r.url, token, "bash_code_execution", {
                "command": f"echo {n} >> /workspace/log; wc -l < /workspace/log", "container_id": cid}))
            assert res["structuredContent"]["stdout"].strip() == str(n + 1)

        listed = {f.id for f in await anyio.to_thread.run_sync(lambda: list(sdk2.beta.files.list()))}
        assert {up.id, out_id} <= listed
        assert _our_containers(shared) == {cid}  # no replica made a container of its own: 0 orphans
    with psycopg.connect(shared.database_url) as conn:  # type: ignore[arg-type]
        assert conn.execute("SELECT COUNT(*) FROM files").fetchone()[0] == len(listed)
        orphan_chunks = conn.execute(
            "SELECT COUNT(*) FROM file_chunks c LEFT JOIN files f ON f.id = c.file_id WHERE f.id IS NULL").fetchone()[0]
        assert orphan_chunks == 0


async def test_call_pacing_is_counted_once_across_replicas(tmp_path: Path, docker_engine: None, postgres_url: str) -> None:
    s = make_settings(tmp_path, database_url=postgres_url, http_calls_per_minute=1.0, http_call_burst=4)
    token = new_token()
    try:
        with replicas(s, token) as (r1, r2, r3):
            first = await anyio.to_thread.run_sync(lambda: _stateless(r1.url, token, "bash_code_execution", {"command": "true"}))
            cid = first["_meta"]["container"]["id"] if "_meta" in first else None
            outcomes = []
            for r in (r2, r3, r1, r2, r3):
                res = await anyio.to_thread.run_sync(lambda r=r: _stateless(r.url, token, "bash_code_execution", {
                    "command": "true", **({"container_id": cid} if cid else {})}))
                outcomes.append(res["structuredContent"].get("error_code", "ok"))
            # a burst of 4 in all, not 4 per replica: the 1st call + 3 more, then refusals everywhere
            assert outcomes == ["ok", "ok", "ok", "too_many_requests", "too_many_requests"], outcomes
    finally:
        remove_installation(s)


async def test_a_replica_killed_mid_call_gives_a_clear_error_and_the_next_call_elsewhere_finds_the_container_intact(
    shared: Settings,
) -> None:
    token = new_token()
    with replicas(shared, token) as (r1, r2, r3):
        made = await anyio.to_thread.run_sync(lambda: _stateless(r1.url, token, "bash_code_execution", {
            "command": "head -c 100000 /dev/urandom > /workspace/keep && sha256sum /workspace/keep | cut -c1-64"}))
        digest = made["structuredContent"]["stdout"].strip()
        cid = made["_meta"]["container"]["id"]
        box: dict[str, Any] = {}

        def long_call() -> None:
            try:
                with httpx2.Client(timeout=60) as http:
                    box["response"] = modern_call(http, r2.url, token, "bash_code_execution",
                                                  {"command": "sleep 30", "container_id": cid})
            except httpx2.HTTPError as exc:  # the connection dropped: the client's clear error
                box["error"] = exc

        caller = threading.Thread(target=long_call)
        caller.start()
        await anyio.sleep(3)
        r2.proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(caller.join, 30.0)
        assert "error" in box or rpc_payload(box["response"]).get("error"), box
        for r in (r3, r1):
            res = await anyio.to_thread.run_sync(lambda r=r: _stateless(r.url, token, "bash_code_execution", {
                "command": "sha256sum /workspace/keep | cut -c1-64", "container_id": cid}))
            assert res["structuredContent"]["stdout"].strip() == digest
        assert _our_containers(shared) == {cid}


async def test_a_handshake_session_opened_on_one_replica_continues_on_the_others_in_its_container(shared: Settings) -> None:
    from tests.support.http_probe import legacy_headers, open_legacy_session

    token = new_token()
    with replicas(shared, token) as (r1, r2, r3), httpx2.Client(timeout=120) as http:
        sid = open_legacy_session(http, r1.url, token)
        seen = []
        for n, r in enumerate((r1, r2, r3, r2)):  # no container_id: the session's own container
            res = tool_result(legacy_call(http, r.url, token, sid, "bash_code_execution",
                                          {"command": f"echo {n} >> /workspace/s; wc -l < /workspace/s"}, id=n + 2))
            assert res["structuredContent"]["stdout"].strip() == str(n + 1), res
            seen.append(res["_meta"]["container"]["id"])
        assert len(set(seen)) == 1
        # another principal's token cannot ride the session on any replica
        assert legacy_call(http, r3.url, new_token(), sid, "bash_code_execution", {"command": "true"}).status_code == 401
        # ended on one replica: gone on all
        assert http.delete(r3.url + "/mcp", headers=legacy_headers(token, sid)).status_code in (200, 204)
        assert legacy_call(http, r1.url, token, sid, "bash_code_execution", {"command": "true"}).status_code == 404
        # session-less requests without container_id share each principal's default container across replicas
        a = _stateless(r1.url, token, "bash_code_execution", {"command": "echo x > /workspace/d"})
        b = _stateless(r2.url, token, "bash_code_execution", {"command": "cat /workspace/d"})
        assert b["structuredContent"]["stdout"] == "x\n" and a["_meta"]["container"]["id"] == b["_meta"]["container"]["id"]
        assert _our_containers(shared) == {seen[0], a["_meta"]["container"]["id"]}


def _leader_pid(url: str) -> int | None:
    """The OS pid of the replica holding the leader lock (its connection's application_name)."""
    from mcp_codeexec.database import LEADER_LOCK

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND ((l.classid::bigint << 32) | l.objid::bigint) = %s",
            (LEADER_LOCK,)).fetchone()
    return int(row[0].rsplit("/", 1)[1]) if row else None


async def test_the_leader_replica_killed_is_replaced_within_seconds_and_calls_go_on(shared: Settings) -> None:
    token = new_token()
    with replicas(shared, token) as reps:
        url = shared.database_url
        assert url is not None
        pids = {r.proc.pid: r for r in reps}
        deadline = time.monotonic() + 10
        while (leader := _leader_pid(url)) is None and time.monotonic() < deadline:
            await anyio.sleep(0.1)
        assert leader in pids, (leader, list(pids))
        pids[leader].proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        new = None
        while time.monotonic() - killed < 15:
            new = _leader_pid(url)
            if new is not None and new != leader:
                break
            await anyio.sleep(0.05)
        took = time.monotonic() - killed
        assert new in pids and new != leader, new
        assert took < 5.0, f"hand-over took {took:.2f} s"
        print(f"leader replica killed: replaced after {took:.2f} s")
        survivor = next(r for pid, r in pids.items() if pid != leader)
        res = await anyio.to_thread.run_sync(lambda: _stateless(survivor.url, token, "bash_code_execution", {"command": "echo ok"}))
        assert res["structuredContent"]["stdout"] == "ok\n"


async def test_sigterm_drains_a_replica_its_call_is_answered_and_the_next_call_elsewhere_continues(shared: Settings) -> None:
    token = new_token()
    with replicas(shared, token) as (r1, r2, r3):
        made = await anyio.to_thread.run_sync(lambda: _stateless(r1.url, token, "bash_code_execution", {
            "command": "echo kept > /workspace/k"}))
        cid = made["_meta"]["container"]["id"]
        box: dict[str, Any] = {}

        def call() -> None:
            box["result"] = _stateless(r2.url, token, "bash_code_execution", {
                "command": "sleep 2; echo finished", "container_id": cid})

        with httpx2.Client(timeout=30) as probe:  # no token: what a load balancer's probes send
            assert probe.get(r2.url + "/readyz").status_code == 200
            assert probe.get(r2.url + "/healthz").json() == {"status": "ok"}
            caller = threading.Thread(target=call)
            caller.start()
            await anyio.sleep(1)
            r2.proc.send_signal(signal.SIGTERM)  # within the grace: the call in flight finishes
            await anyio.sleep(0.3)
            # Draining: not ready, and a new request is refused with a retry hint, not served.
            ready = probe.get(r2.url + "/readyz")
            assert ready.status_code == 503 and ready.json() == {"status": "draining"}, ready.text
            refused = probe.post(r2.url + "/mcp", json={"jsonrpc": "2.0", "id": 9, "method": "tools/list"},
                                 headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1", refused.text
            assert "shutting down (SIGTERM)" in refused.json()["error"]["message"]
            await anyio.to_thread.run_sync(caller.join, 30.0)
        assert box["result"]["structuredContent"]["stdout"] == "finished\n", box
        assert await anyio.to_thread.run_sync(r2.proc.wait, 30) == 0
        res = await anyio.to_thread.run_sync(lambda: _stateless(r3.url, token, "bash_code_execution", {
            "command": "cat /workspace/k", "container_id": cid}))
        assert res["structuredContent"]["stdout"] == "kept\n"


async def test_the_per_principal_container_quota_holds_across_replicas(tmp_path: Path, docker_engine: None,
                                                                       postgres_url: str) -> None:
    from tests.support.http_probe import open_legacy_session

    s = make_settings(tmp_path, database_url=postgres_url, max_containers_per_principal=2)
    token = new_token()
    try:
        with replicas(s, token) as reps, httpx2.Client(timeout=120) as http:
            outcomes = []
            for n, r in enumerate(reps):  # a new session (its own container) on each replica
                sid = open_legacy_session(http, r.url, token)
                res = tool_result(legacy_call(http, r.url, token, sid, "bash_code_execution", {"command": "true"}, id=n + 2))
                outcomes.append(res["structuredContent"].get("error_code", "ok"))
            assert outcomes == ["ok", "ok", "too_many_requests"], outcomes  # 2 in all, not 2 per replica
            assert len(_our_containers(s)) == 2
    finally:
        remove_installation(s)


async def test_simultaneous_creates_on_three_replicas_cannot_pass_the_quota_together(tmp_path: Path, docker_engine: None,
                                                                                       postgres_url: str) -> None:
    """Six new sessions at the same instant, two per replica, with a quota of 2: counting and
    making are one step under a per-principal lock (in each replica and in the database)."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.support.http_probe import open_legacy_session

    s = make_settings(tmp_path, database_url=postgres_url, max_containers_per_principal=2)
    token = new_token()
    try:
        with replicas(s, token) as reps, httpx2.Client(timeout=180) as http:
            sessions = [(r, open_legacy_session(http, r.url, token)) for r in reps for _ in range(2)]

            def first_call(n: int) -> str:
                r, sid = sessions[n]
                res = tool_result(legacy_call(http, r.url, token, sid, "bash_code_execution", {"command": "true"}, id=n + 2))
                return res["structuredContent"].get("error_code", "ok")

            with ThreadPoolExecutor(len(sessions)) as pool:
                outcomes = await anyio.to_thread.run_sync(lambda: list(pool.map(first_call, range(len(sessions)))))
            assert sorted(outcomes) == ["ok", "ok"] + ["too_many_requests"] * 4, outcomes
            assert len(_our_containers(s)) == 2
    finally:
        remove_installation(s)


def test_the_typescript_sdk_continues_one_session_and_one_container_across_three_replicas(shared: Settings) -> None:
    from tests.support.npm import NODE_DIR, ensure_installed

    sdk = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
    ensure_installed("the MCP TypeScript SDK", "@modelcontextprotocol/sdk", sdk.is_file)
    script = Path(__file__).parent / "js" / "replicas_client.mjs"
    token = new_token()
    with replicas(shared, token) as reps:
        env = {**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")}
        # ESM resolves packages from the script's folder up: run a copy inside NODE_DIR
        runner = NODE_DIR / "replicas_client.mjs"
        runner.write_text(script.read_text())
        proc = subprocess.run(["node", str(runner), token, *(r.url for r in reps)], capture_output=True, text=True,
                              timeout=180, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    steps = out["steps"]
    assert [s["stdout"] for s in steps] == ["from-ts\n"] * 5, steps
    assert len({s["container"] for s in steps}) == 1 and all(s.get("error") is None for s in steps)


async def test_progress_of_a_call_reaches_the_client_from_the_replica_that_runs_it(tmp_path: Path, docker_engine: None,
                                                                                  postgres_url: str) -> None:
    s = make_settings(tmp_path, database_url=postgres_url, progress_interval=0.3)
    token = new_token()
    try:
        with replicas(s, token) as (r1, r2, _):
            async with mcp_client("http", s, base_url=r1.url, token=token) as client:
                cid = (await client.call_tool("bash_code_execution", {"command": "true"})).meta["container"]["id"]
            updates: list[str | None] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                updates.append(message)

            async with mcp_client("http", s, base_url=r2.url, token=token) as client:
                result = await client.call_tool(
                    "bash_code_execution", {"command": "for i in 1 2 3 4; do echo tick$i; sleep 0.5; done", "container_id": cid},
                    progress_callback=on_progress)
            assert result.structured_content["stdout"].count("tick") == 4
            assert updates and any("tick" in (m or "") for m in updates), updates
    finally:
        remove_installation(s)


async def test_a_container_busy_on_one_replica_is_not_stopped_as_idle_by_another(tmp_path: Path, docker_engine: None,
                                                                                postgres_url: str) -> None:
    s = make_settings(tmp_path, database_url=postgres_url, idle_stop_seconds=3.0, reap_interval_seconds=1.0)
    token = new_token()
    try:
        with replicas(s, token) as (r1, r2, _):
            made = await anyio.to_thread.run_sync(lambda: _stateless(r1.url, token, "bash_code_execution", {
                "command": "echo alive > /tmp/alive"}))  # /tmp is tmpfs: a stop would lose it
            cid = made["_meta"]["container"]["id"]
            for _ in range(8):  # replica 1 sees no use for 8 s; replica 2 uses it every second
                await anyio.sleep(1)
                res = await anyio.to_thread.run_sync(lambda: _stateless(r2.url, token, "bash_code_execution", {
                    "command": "cat /tmp/alive", "container_id": cid}))
                assert res["structuredContent"]["stdout"] == "alive\n", res
            deadline = time.monotonic() + 20  # once nobody uses it, it is stopped (files stay)
            client = docker.from_env()
            try:
                while client.containers.get(f"mcp-codeexec-{cid}").status == "running" and time.monotonic() < deadline:
                    await anyio.sleep(0.5)
                assert client.containers.get(f"mcp-codeexec-{cid}").status != "running"
            finally:
                client.close()
    finally:
        remove_installation(s)
