"""The shared metadata store: which database, and its versioned schema.

One server keeps its metadata in embedded SQLite files under the data directory (``files.db``,
``skills.db``, JSON owner records, in-memory pacing) — today's default, unchanged. N replicas of
the HTTP server share one PostgreSQL database instead (``--database-url postgresql://…`` or
``MCP_CODEEXEC_DATABASE_URL``): file metadata and bytes, sandbox ownership records, open MCP
sessions and pacing buckets live there, so every replica sees one world.

The store interface is small on purpose: each kind of state keeps the class its callers already
use (``FileStore``, ``OwnerRegistry``, ``CallRateLimiter``, ``SessionLedger``) and gains a
PostgreSQL twin in ``mcp_codeexec.pg_store``; ``open_*`` below picks one from the settings.

Migrations are numbered and applied in order inside one transaction that first takes
``pg_advisory_xact_lock(MIGRATION_LOCK)``: replicas starting at the same moment queue on the lock,
and each one after the first finds the versions already recorded in ``schema_migrations``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

MIGRATION_LOCK = 0x6D63_7065_0001  # "mcpe" + 1: an application-wide advisory key for migrations
LEADER_LOCK = 0x6D63_7065_0002  # held (session-level) by the replica that runs the background work
QUOTA_LOCK = 0x6D63_7065  # with hashtext(principal): held while a replica counts and makes that principal's sandbox

# Bytes are stored as BYTEA chunks of CHUNK_BYTES rows rather than large objects: a file's chunks
# go with its metadata row (ON DELETE CASCADE, one transaction), so a crash can leave neither a
# row without bytes nor bytes without a row — large objects would need lo_unlink bookkeeping and
# vacuumlo for orphans, and are skipped by logical replication. Every replica reaches them
# through the connection it already has, with no object store to run.
CHUNK_BYTES = 1024 * 1024

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE files (
            seq          BIGSERIAL PRIMARY KEY,
            id           TEXT    NOT NULL UNIQUE,
            filename     TEXT    NOT NULL,
            size         BIGINT  NOT NULL,
            mime_type    TEXT    NOT NULL,
            created_us   BIGINT  NOT NULL,
            container_id TEXT,
            origin       TEXT    NOT NULL CHECK (origin IN ('upload', 'output', 'hosted')),
            principal    TEXT    NOT NULL,
            sha256       TEXT    NOT NULL,
            downloadable INTEGER NOT NULL,
            expires_us   BIGINT
        );
        CREATE INDEX files_by_principal ON files (principal, seq);
        CREATE INDEX files_by_container ON files (container_id, seq);
        CREATE INDEX files_by_created ON files (created_us);
        CREATE INDEX files_by_expiry ON files (expires_us) WHERE expires_us IS NOT NULL;
        CREATE TABLE file_chunks (
            file_id TEXT    NOT NULL REFERENCES files (id) ON DELETE CASCADE,
            n       INTEGER NOT NULL,
            data    BYTEA   NOT NULL,
            PRIMARY KEY (file_id, n)
        );
        CREATE TABLE sandbox_owners (
            cid     TEXT PRIMARY KEY,
            record  JSONB NOT NULL,
            updated TIMESTAMPTZ NOT NULL DEFAULT now()
        );
        CREATE TABLE mcp_sessions (
            sid       TEXT PRIMARY KEY,
            principal TEXT NOT NULL,
            in_flight INTEGER NOT NULL DEFAULT 0,
            last_seen DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX mcp_sessions_by_principal ON mcp_sessions (principal);
        CREATE TABLE pacing_buckets (
            principal TEXT PRIMARY KEY,
            tokens    DOUBLE PRECISION NOT NULL,
            updated   DOUBLE PRECISION NOT NULL,
            admitted  BOOLEAN NOT NULL
        );
        """,
    ),
]
MIGRATIONS.append((
    2,
    """
    CREATE TABLE skills (
        id TEXT PRIMARY KEY, principal TEXT NOT NULL, display_name TEXT NOT NULL, name TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, latest_version_id TEXT NOT NULL
    );
    CREATE INDEX skills_principal ON skills (principal, created_at);
    CREATE TABLE versions (
        id TEXT PRIMARY KEY, skill_id TEXT NOT NULL, epoch TEXT NOT NULL, name TEXT NOT NULL,
        description TEXT NOT NULL, digest TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        seq BIGSERIAL NOT NULL
    );
    CREATE INDEX versions_skill ON versions (skill_id, created_at);
    CREATE TABLE skill_blobs (
        version_id TEXT PRIMARY KEY REFERENCES versions (id) ON DELETE CASCADE,
        data       BYTEA NOT NULL
    );
    """,
))
MIGRATIONS.append((
    3,
    """
    CREATE TABLE session_containers (
        session_key  TEXT PRIMARY KEY,
        container_id TEXT NOT NULL,
        updated      DOUBLE PRECISION NOT NULL
    );
    """,
))
MIGRATIONS.append((
    4,
    """
    CREATE TABLE container_use (
        cid       TEXT PRIMARY KEY,
        last_used DOUBLE PRECISION NOT NULL
    );
    """,
))
MIGRATIONS.append((
    5,
    """
    CREATE TABLE http_tokens (
        id        TEXT PRIMARY KEY,
        digest    TEXT NOT NULL UNIQUE,
        principal TEXT NOT NULL,
        label     TEXT NOT NULL,
        created   DOUBLE PRECISION NOT NULL
    );
    """,
))
SCHEMA_VERSION = MIGRATIONS[-1][0]


def is_postgres(url: str | None) -> bool:
    return bool(url) and url.split("://", 1)[0] in ("postgres", "postgresql")  # type: ignore[union-attr]


def connect(url: str, **kw: Any) -> psycopg.Connection[Any]:
    """An autocommit connection with TCP keepalives, so a peer that vanished is noticed in seconds."""
    try:
        import psycopg
    except ImportError:
        raise SystemExit(
            "mcp-codeexec: --database-url postgresql://… needs the psycopg driver: pip install 'mcp-codeexec[postgres]'"
        ) from None
    return psycopg.connect(
        url, autocommit=True, connect_timeout=10, keepalives=1, keepalives_idle=5, keepalives_interval=2,
        keepalives_count=3, application_name=f"mcp-codeexec/{os.getpid()}", **kw,
    )


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to ``SCHEMA_VERSION``; safe from several replicas at once. Returns the version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"the database has schema version {current}; this mcp-codeexec knows {SCHEMA_VERSION}. Upgrade mcp-codeexec."
            )
        for version, sql in MIGRATIONS:
            if version > current:
                conn.execute(sql)  # type: ignore[arg-type]  # trusted, static DDL
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
    return SCHEMA_VERSION


# --------------------------------------------------------------------------- choosing the store


def _pg(settings: Any) -> str | None:
    url = getattr(settings, "database_url", None)
    return url if is_postgres(url) else None


def open_file_store(settings: Any) -> Any:
    """The file store the settings ask for: ``PgFileStore`` with a PostgreSQL URL, else ``FileStore``."""
    if url := _pg(settings):
        from .pg_store import PgFileStore

        return PgFileStore(url, settings.files_dir, settings.file_retention_days)
    from .files import FileStore

    return FileStore(settings.files_dir, settings.file_retention_days)


def open_rate_limiter(settings: Any) -> Any:
    """The per-principal call pacing (None when disabled); shared by all replicas with PostgreSQL."""
    if not settings.http_calls_per_minute:
        return None
    if url := _pg(settings):
        from .pg_store import PgCallRateLimiter

        return PgCallRateLimiter(url, settings.http_calls_per_minute, settings.http_call_burst)
    from .rate_limit import CallRateLimiter

    return CallRateLimiter(settings.http_calls_per_minute, settings.http_call_burst)


def open_session_ledger(settings: Any) -> Any:
    if url := _pg(settings):
        from .pg_store import PgSessionLedger

        return PgSessionLedger(url, settings.http_max_sessions_per_principal)
    from .session_ledger import SessionLedger

    return SessionLedger(settings.http_max_sessions_per_principal)


def open_owner_registry(settings: Any, root: Any) -> Any:
    if url := _pg(settings):
        from .pg_store import PgOwnerRegistry

        return PgOwnerRegistry(url, root)
    from .engines.docker import OwnerRegistry

    return OwnerRegistry(root)


def open_session_map(settings: Any) -> Any:
    """Which container each MCP session (and each principal's session-less default) uses, shared
    by replicas; None for one server (the backend's own memory is the map)."""
    if url := _pg(settings):
        from .pg_store import SharedSessionMap

        return SharedSessionMap(url)
    return None


def open_token_store(settings: Any) -> Any:
    """HTTP tokens made with ``mcp-codeexec tokens add``: in the shared database, else ``tokens.db``."""
    from .tokens import TokenStore, pg_tokens, sqlite_tokens

    if url := _pg(settings):
        return TokenStore(pg_tokens(url))
    return TokenStore(sqlite_tokens(settings.data_dir / "tokens.db"))


def open_leader(settings: Any) -> Any:
    """A started ``LeaderElection`` for replicas sharing PostgreSQL; None for one server (it leads).
    On the kubernetes backend the servers of one installation elect theirs with a Lease."""
    if getattr(settings, "backend", None) == "kubernetes":
        from .engines.k8s_lease import open_lease_election

        return open_lease_election(settings)
    if url := _pg(settings):
        from .leader import LeaderElection

        return LeaderElection(url).start()
    return None


__all__ = ["CHUNK_BYTES", "LEADER_LOCK", "QUOTA_LOCK", "MIGRATIONS", "SCHEMA_VERSION", "connect", "is_postgres", "migrate", "open_file_store", "open_leader", "open_owner_registry", "open_rate_limiter",
           "open_session_ledger", "open_session_map", "open_token_store"]
