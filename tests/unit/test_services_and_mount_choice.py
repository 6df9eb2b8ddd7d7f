"""Input handling of the opt-in tools and of named mounts (no Docker)."""

from __future__ import annotations

import pytest

from mcp_codeexec import mount_choice, services
from mcp_codeexec.config import load_settings
from mcp_codeexec.errors import InvalidToolInput
from mcp_codeexec.mounts import MountError


def test_services_input_treats_blank_fields_as_absent_and_requires_name_and_command_where_needed():
    assert services.validate({"action": "list", "name": "", "tail": None}).action == "list"
    with pytest.raises(InvalidToolInput, match="`name` is required"):
        services.validate({"action": "logs"})
    with pytest.raises(InvalidToolInput, match="`command` is required"):
        services.validate({"action": "start", "name": "web", "command": "   "})
    with pytest.raises(InvalidToolInput, match="invalid input for services"):
        services.validate({"action": "list", "extra": 1})


def test_the_agent_message_carries_the_configured_caps_and_a_bounded_tail(tmp_path):
    s = load_settings(data_dir=str(tmp_path), services_max=3, services_log_bytes=4096, config_file=None)
    start = services.agent_message(services.validate({"action": "start", "name": "a", "command": "x"}), s)
    assert start == {"op": "services", "action": "start", "name": "a", "command": "x",
                     "max_services": 3, "log_bytes": 4096, "max_memory": 0}
    logs = services.agent_message(services.validate({"action": "logs", "name": "a", "tail": 10**9}), s)
    assert logs["tail"] == 4096


def test_the_services_tool_is_defined_only_when_opted_in(tmp_path):
    from mcp_codeexec.server import tool_definitions

    plain = [t.name for t in tool_definitions(load_settings(data_dir=str(tmp_path), config_file=None))]
    opted = [t.name for t in tool_definitions(load_settings(data_dir=str(tmp_path), services=True, snapshots=True, config_file=None))]
    assert "services" not in plain and "snapshots" not in plain
    assert opted == [*plain, "services", "snapshots"]


def test_named_mount_specs_and_selections_are_parsed_strictly():
    assert mount_choice.parse_named(["src=/a", "d=/b:/mnt/d:rw"]) == {"src": "/a", "d": "/b:/mnt/d:rw"}
    for bad in (["/a"], ["=/a"], ["a b=/a"], ["x="]):
        with pytest.raises(MountError):
            mount_choice.parse_named(bad)
    assert mount_choice.raw_selection({mount_choice.META_KEY: ["a"]}) == ["a"]
    assert mount_choice.raw_selection(None) is None
    assert mount_choice.selection(["a", "a", "b"]) == ("a", "b")
    assert mount_choice.selection([]) is None
    for bad in ("a", [1], {"a": 1}):
        with pytest.raises(InvalidToolInput):
            mount_choice.selection(bad)
