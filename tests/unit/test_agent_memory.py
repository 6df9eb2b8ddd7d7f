"""The idle agent does not keep its own parse tree: an idle sandbox's memory is mostly the agent's
(issue 18: ≤ 12 MiB per idle sandbox; the agent run as a script held ~6 MiB of AST for its life)."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_agent import AgentClient


def rss_anon_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise AssertionError("no RssAnon")


def test_the_idle_agent_holds_no_parse_tree_of_itself(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    agent = AgentClient(tmp_path / "ws", tmp_path / "state", tmp_path / "agent.log")
    try:
        assert agent.call("ping")["type"] == "result"
        assert agent.call("bash", command="true")["type"] == "result"
        anon = rss_anon_kib(agent.proc.pid)
    finally:
        agent.proc.stdin.close()
        agent.proc.wait(timeout=30)
    # A script's AST stays alive while it runs: ~12 MiB of anonymous memory before, ~6-7 now.
    assert anon < 9 * 1024, f"the idle agent holds {anon} KiB of anonymous memory"
