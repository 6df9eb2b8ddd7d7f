from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_codeexec.config import Settings, load_settings
from tests.support.servers import TRANSPORTS, http_server, new_token, remove_installation


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        data_dir=str(tmp_path / "data"),
        pool_size=0,
        call_timeout=20.0,
        reap_interval_seconds=3600.0,
        runtime=os.environ.get("MCP_CODEEXEC_RUNTIME") or None,
        config_file=None,
    )
    values.update(overrides)
    os.environ.setdefault("MCP_CODEEXEC_CONFIG", str(tmp_path / "no-config.toml"))
    return load_settings(**values)


@pytest.fixture
def settings(tmp_path: Path, docker_engine: None) -> Iterator[Settings]:
    s = make_settings(tmp_path)
    yield s
    remove_installation(s)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def http_base(transport: str, settings: Settings) -> Iterator[tuple[str | None, str | None]]:
    """(base_url, token) for the http transport; (None, None) otherwise."""
    if transport != "http":
        yield None, None
        return
    token = new_token()
    with http_server(settings, token=token) as url:
        yield url, token
