"""Bearer tokens kept in the store (`mcp-codeexec tokens`): made once, kept as digests, looked up by
the HTTP edge, revoked on every server within the cache interval; SQLite for one server,
PostgreSQL for replicas."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from mcp_codeexec import tokens as tokens_module
from mcp_codeexec.config import load_settings
from mcp_codeexec.database import open_token_store
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import create_http_app
from mcp_codeexec.tokens import TokenError, TokenStore, pg_tokens, sqlite_tokens
from tests.support.dummy_backend import DummyBackend
from tests.support.http_probe import modern_call, serve_app, tool_result
from tests.support.isolation import isolate_settings


@pytest.fixture(autouse=True)
def _no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    isolate_settings(tmp_path, monkeypatch)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TokenStore]:
    if request.param == "sqlite":
        yield TokenStore(sqlite_tokens(tmp_path / "tokens.db"))
    else:
        url = request.getfixturevalue("postgres_url")
        from mcp_codeexec.database import connect, migrate

        with connect(url) as conn:
            migrate(conn)
        yield TokenStore(pg_tokens(url))


def test_a_token_is_made_once_kept_as_its_digest_and_names_its_principal(store: TokenStore) -> None:
    token, record = store.add("alice", "laptop")
    assert len(token) >= 40 and record.principal == "alice" and record.label == "laptop" and record.id.startswith("tok_")
    assert store.principal_for(token) == "alice"
    assert store.principal_for(token + "x") is None
    assert [(r.id, r.principal) for r in store.list()] == [(record.id, "alice")]
    assert token not in repr(store.list())


def test_revoking_by_id_or_principal_takes_effect_at_once_here(store: TokenStore) -> None:
    a1, r1 = store.add("alice")
    a2, _ = store.add("alice")
    b, _ = store.add("bob")
    assert store.principal_for(a1) == "alice"  # cached now
    assert store.revoke(r1.id) == 1
    assert store.principal_for(a1) is None and store.principal_for(a2) == "alice"
    assert store.revoke("alice") == 1 and store.principal_for(a2) is None
    assert store.principal_for(b) == "bob" and store.revoke("nobody") == 0


def test_another_servers_revocation_is_seen_within_the_cache_interval(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    other = TokenStore(store.table)  # a second server on the same table
    token, record = store.add("carol")
    assert other.principal_for(token) == "carol"
    store.revoke(record.id)
    assert other.principal_for(token) == "carol"  # still cached over there
    monkeypatch.setattr(tokens_module, "CACHE_SECONDS", 0.0)
    assert other.principal_for(token) is None


@pytest.mark.parametrize("principal", ["local", "", "a b", "x" * 129, "ünï"])
def test_reserved_and_malformed_principals_are_refused(principal: str, tmp_path: Path) -> None:
    with pytest.raises(TokenError):
        TokenStore(sqlite_tokens(tmp_path / "tokens.db")).add(principal)


def test_the_sqlite_file_is_private_to_its_owner(tmp_path: Path) -> None:
    sqlite_tokens(tmp_path / "d" / "tokens.db")
    assert stat.S_IMODE((tmp_path / "d" / "tokens.db").stat().st_mode) == 0o600


def test_the_cli_adds_lists_and_revokes_and_the_http_server_follows_without_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "MCP_CODEEXEC_DATA_DIR": str(tmp_path / "data"), "MCP_CODEEXEC_CONFIG": str(tmp_path / "none.toml")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mcp_codeexec", "tokens", *args], capture_output=True, text=True,
                              env=env, timeout=60, check=False)

    made = cli("add", "dana", "--label", "ci", "--json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    listed = json.loads(cli("ls", "--json").stdout)
    assert [(t["principal"], t["label"]) for t in listed] == [("dana", "ci")] and token not in json.dumps(listed)
    assert cli("add", "local").returncode == 2

    settings = load_settings(data_dir=str(tmp_path / "data"))
    backend = DummyBackend()
    files = FileStore(settings.files_dir)
    app = create_http_app(settings, backend=backend, store=files)
    assert not (tmp_path / "data" / "http_token").exists()  # stored tokens: no generated default one
    try:
        with serve_app(app) as url, httpx2.Client(timeout=30) as http:
            result = tool_result(modern_call(http, url, token, "bash_code_execution", {"command": "whoami"}))
            assert result["structuredContent"]["type"] == "bash_code_execution_result"
            assert backend.calls[-1][1].principal == "dana"
            assert cli("rm", "dana").returncode == 0
            monkeypatch.setattr(tokens_module, "CACHE_SECONDS", 0.0)  # not wait out the cache
            refused = http.get(url + "/v1/files", headers={"Authorization": f"Bearer {token}"})
            assert refused.status_code == 401
    finally:
        files.close()


def test_open_token_store_picks_the_shared_database_when_one_is_configured(tmp_path: Path, postgres_url: str) -> None:
    a = open_token_store(load_settings(data_dir=str(tmp_path / "a"), database_url=postgres_url))
    b = open_token_store(load_settings(data_dir=str(tmp_path / "b"), database_url=postgres_url))
    token, _ = a.add("erin")
    assert b.principal_for(token) == "erin"  # another replica, another data dir, the same tokens
    assert not (tmp_path / "a" / "tokens.db").exists()


