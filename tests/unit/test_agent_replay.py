"""A broken stream under running requests: the agent's ``replay`` op and the host's resume.

The agent keeps every frame of a request by id; after the host's stream broke (an API server
restart on Kubernetes) the host opens it again, says hello (same container life?) and replays each
waiting request: a request is never run twice, and a reply is never lost without an error saying so.

The first tests speak the agent protocol directly; the rest run ``AgentConnection`` against a real
agent process behind a ``Link`` that can be cut: bytes in flight either way are dropped, as a broken
attach drops them, while the agent and its pipes live on.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from mcp_codeexec.agent_client import AgentConnection, AgentGone
from mcp_codeexec.errors import ContainerExpired, Unavailable
from tests.unit.test_agent import AGENT, AGENT_PYTHON, AgentClient, bash_fields, start_agent

# -- the agent's replay op ------------------------------------------------------------------------


def replay(agent: AgentClient, target: int) -> tuple[list[tuple[dict[str, Any], bytes]], dict[str, Any]]:
    """(the target's frames written again, the replay's own result)."""
    rid = agent.send("replay", target=target)
    begin, _ = agent.next_frame(rid)
    assert begin == {"id": rid, "type": "replay_begin", "target": target}
    end, _ = agent.next_frame(rid)
    assert end["type"] == "result", end
    frames = []
    while agent.pending(target):
        frames.append(agent.next_frame(target, timeout=1))
    return frames, end["result"]


@pytest.fixture
def agent(tmp_path: Path):
    client = start_agent(tmp_path)
    yield client
    assert client.close() == 0, client.stderr_text()


def test_a_finished_request_is_written_again_whole_and_not_run_again(agent: AgentClient) -> None:
    rid = agent.send("bash", **bash_fields("echo ran >> count.txt; echo out"))
    first = agent.frames(rid)
    frames, end = replay(agent, rid)
    assert end == {"target": rid, "state": "done"}
    assert [f for f, _ in frames] == [f for f, _ in first if f["type"] != "progress"]
    assert (agent.workspace / "count.txt").read_text() == "ran\n"


def test_a_running_request_replays_its_frames_so_far_and_the_rest_follow(agent: AgentClient) -> None:
    rid = agent.send("bash", **bash_fields("sleep 0.5; echo late"))
    frames, end = replay(agent, rid)
    assert (frames, end) == ([], {"target": rid, "state": "running"})
    assert agent.frames(rid)[-1][0]["result"]["stdout"] == "late\n"


def test_a_request_never_received_is_unknown_and_an_evicted_one_lost(agent: AgentClient) -> None:
    assert replay(agent, 987654)[1]["state"] == "unknown"
    first = agent.send("view", path="/nonexistent")
    agent.frames(first)
    for _ in range(256):  # the journal keeps 256 requests
        agent.frames(agent.send("view", path="/nonexistent"))
    assert replay(agent, first)[1]["state"] == "lost"


def test_pings_and_hellos_are_not_kept_and_hello_names_the_container_life(agent: AgentClient) -> None:
    hello = agent.result("hello")
    assert "replay" in hello["ops"] and isinstance(hello["boot"], str) and len(hello["boot"]) == 16
    ping = agent.send("ping")
    agent.frames(ping)
    assert replay(agent, ping)[1]["state"] == "unknown"


# -- the host's resume, against a real agent --------------------------------------------------------


class Wire(anyio.abc.ByteStream):
    """One 'attach' of a Link: dead for good once cut."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.cut = False
        self._send, self._receive = anyio.create_memory_object_stream[bytes | None](1000)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data = await self._receive.receive()
        if data is None or self.cut:
            raise anyio.BrokenResourceError
        return data

    async def send(self, item: bytes) -> None:
        if self.cut:
            raise anyio.BrokenResourceError
        await self.link.proc.stdin.send(item)

    async def send_eof(self) -> None:
        return None

    async def aclose(self) -> None:
        self.cut = True
        self._send.send_nowait(None)


class Link:
    """The agent's pipes behind cuttable wires; what the agent writes while no wire is up is lost."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self.wire: Wire | None = None
        self.opens = 0
        self.refuse: list[BaseException] = []  # what the next reconnects raise, in order

    async def pump(self) -> None:
        async for chunk in self.proc.stdout:
            wire = self.wire
            if wire is not None and not wire.cut:
                wire._send.send_nowait(chunk)

    def open(self) -> Wire:
        self.wire = Wire(self)
        self.opens += 1
        return self.wire

    def cut(self) -> None:
        assert self.wire is not None
        self.wire.cut = True
        self.wire._send.send_nowait(None)
        self.wire = None

    async def reconnect(self) -> tuple[anyio.abc.ByteStream, bool]:
        if self.refuse:
            raise self.refuse.pop(0)
        return self.open(), False


@asynccontextmanager
async def linked_agent(tmp_path: Path, name: str = "agent", resume_seconds: float = 10.0
                       ) -> AsyncIterator[tuple[AgentConnection, Link, Path]]:
    workspace = tmp_path / f"{name}-ws"
    workspace.mkdir()
    env = dict(os.environ, CODEEXEC_WORKSPACE=str(workspace), CODEEXEC_STATE_DIR=str(tmp_path / f"{name}-state"))
    with open(tmp_path / f"{name}.log", "wb") as log:  # noqa: ASYNC230 - a local log file, opened once
        async with await anyio.open_process([AGENT_PYTHON, str(AGENT)], env=env, stderr=log) as proc:
            link = Link(proc)
            conn = AgentConnection(link.open(), docker_mux=False, name=name, reconnect=link.reconnect,
                                   resume_seconds=resume_seconds)
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.pump)
                tg.start_soon(conn.run_reader)
                assert (await conn.hello())["type"] == "result"
                try:
                    yield conn, link, workspace
                finally:
                    await conn.aclose()
                    await proc.stdin.aclose()
                    with anyio.fail_after(15):
                        await proc.wait()
                    tg.cancel_scope.cancel()


def bash(command: str) -> dict[str, Any]:
    return {"op": "bash", **bash_fields(command)}



@pytest.mark.anyio
async def test_a_reply_written_while_the_stream_was_down_comes_back_by_replay_and_the_command_ran_once(
        tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, ws):
        # Refused reconnects (an API server still starting): the reply is written into the gap.
        link.refuse = [Unavailable("apiserver down")] * 4  # 0.2 + 0.4 + 0.8 + 1.6 s of backoff
        async with anyio.create_task_group() as tg:
            replies = []

            async def call() -> None:
                replies.append(await conn.request(bash("echo ran >> count.txt; sleep 1; echo finished"), timeout=30))

            tg.start_soon(call)
            await anyio.sleep(0.15)
            link.cut()
        assert replies[0]["type"] == "result" and replies[0]["result"]["stdout"] == "finished\n"
        assert (ws / "count.txt").read_text() == "ran\n"
        assert conn.resumes == 1 and link.opens == 2
        assert (await conn.request(bash("echo next")))["result"]["stdout"] == "next\n"


@pytest.mark.anyio
async def test_a_request_still_running_after_the_resume_finishes_on_the_new_stream(tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, ws):
        async with anyio.create_task_group() as tg:
            replies = []

            async def call() -> None:
                replies.append(await conn.request(bash("echo ran >> count.txt; sleep 2; echo finished"), timeout=30))

            tg.start_soon(call)
            await anyio.sleep(0.3)
            link.cut()
        assert replies[0]["result"]["stdout"] == "finished\n"
        assert (ws / "count.txt").read_text() == "ran\n"
        assert conn.resumes == 1


@pytest.mark.anyio
async def test_a_request_sent_into_a_broken_stream_is_sent_again_once(tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, ws):
        link.cut()  # the reader has not seen it yet: the send itself fails
        reply = await conn.request(bash("echo ran >> count.txt; echo ok"), timeout=30)
        assert reply["result"]["stdout"] == "ok\n"
        assert (ws / "count.txt").read_text() == "ran\n"
        assert conn.resumes == 1


@pytest.mark.anyio
async def test_many_requests_across_a_cut_each_run_exactly_once(tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, ws):
        replies: dict[int, dict[str, Any]] = {}

        async def call(i: int) -> None:
            replies[i] = await conn.request({"op": "create", "path": str(ws / f"f{i}.txt"), "file_text": f"{i}\n"},
                                            timeout=30)
            # bash calls take turns on the one terminal: 20 × 0.1 s keeps most in flight at the cut
            replies[i] = await conn.request(bash(f"echo {i} >> all.txt; sleep 0.1"), timeout=60)

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(call, i)
            await anyio.sleep(0.05)
            link.cut()
        assert all(r["type"] == "result" for r in replies.values()), replies
        assert sorted((ws / "all.txt").read_text().split()) == sorted(str(i) for i in range(20))
        assert all((ws / f"f{i}.txt").read_text() == f"{i}\n" for i in range(20))
        assert conn.resumes == 1


@pytest.mark.anyio
async def test_a_sandbox_gone_for_good_fails_the_request_at_once(tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, _):
        link.refuse = [ContainerExpired("x")]
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                outcome = []

                async def call() -> None:
                    try:
                        await conn.request(bash("sleep 5"), timeout=30)
                    except AgentGone as exc:
                        outcome.append(exc)

                tg.start_soon(call)
                await anyio.sleep(0.2)
                link.cut()
        assert outcome and conn.closed.is_set()


@pytest.mark.anyio
async def test_a_new_container_life_behind_the_resumed_stream_fails_the_request_instead_of_guessing(
        tmp_path: Path) -> None:
    async with linked_agent(tmp_path) as (conn, link, _), linked_agent(tmp_path, "other") as (_, other, _):
        link.refuse = []

        async def to_the_other_agent() -> tuple[anyio.abc.ByteStream, bool]:
            return other.open(), False

        conn._reconnect = to_the_other_agent  # the pod was rebuilt: another agent answers
        async with anyio.create_task_group() as tg:
            replies = []

            async def call() -> None:
                replies.append(await conn.request(bash("sleep 3"), timeout=30))

            tg.start_soon(call)
            await anyio.sleep(0.2)
            link.cut()
        assert replies[0]["type"] == "error" and replies[0]["code"] == "unavailable"
        assert "new container life" in replies[0]["message"]


@pytest.mark.anyio
async def test_without_a_resume_window_a_broken_stream_fails_the_request_as_before(tmp_path: Path) -> None:
    async with linked_agent(tmp_path, resume_seconds=0.0) as (conn, link, _):
        async with anyio.create_task_group() as tg:
            outcome = []

            async def call() -> None:
                try:
                    await conn.request(bash("sleep 2"), timeout=30)
                except AgentGone as exc:
                    outcome.append(exc)

            tg.start_soon(call)
            await anyio.sleep(0.2)
            link.cut()
        assert outcome and link.opens == 1



ECHO = [{"name": "echo", "description": "Echo the input back.", "input_schema": {"type": "object"}}]


@pytest.mark.anyio
async def test_tool_calls_across_a_cut_run_once_and_a_lost_tool_result_is_sent_again(tmp_path: Path) -> None:
    """A cell calls a tool twice. The stream is cut when the second call arrives, before its
    answer goes out: the answer is kept and sent again after the resume, and the replay's copies of
    both tool_call frames (had already) are not handed to the host a second time."""
    async with linked_agent(tmp_path) as (conn, link, _):
        calls: list[str] = []

        async def on_frame(frame: dict[str, Any], blob: bytes) -> None:
            if frame["type"] != "tool_call":
                return
            calls.append(frame["call_id"])
            if len(calls) == 2:
                link.cut()
            await conn.notify({"op": "tool_result", "target": frame["id"], "call_id": frame["call_id"],
                               "text": f"echo:{frame['input']['n']}", "is_error": False})

        code = "a = await echo({'n': 1})\nb = await echo({'n': 2})\nprint(a, b)"
        fields = {"code": code, "timeout": 20.0, "max_output": 100_000, "max_spill": 10_000_000,
                  "max_file": 10_000_000, "progress_interval": None, "tools": ECHO}
        reply = await conn.request({"op": "python", **fields}, on_frame=on_frame, timeout=30)
        assert reply["type"] == "result", reply
        assert reply["result"]["stdout"] == "echo:1 echo:2\n", reply
        assert len(calls) == 2 and len(set(calls)) == 2
        assert conn.resumes == 1
