"""Uploaded skills, per principal: metadata in SQLite, each version's files as one zip blob.

Layout under ``root`` (``<data dir>/skills``)::

    skills.db              skills and versions (WAL; several processes may open it)
    blobs/<version_id>.zip a version's files as ``<name>/...``, written once, renamed into place

Synchronous and thread-safe (one connection per call); async callers use ``anyio.to_thread``.
A skill or version of another principal is indistinguishable from one that does not exist.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .skills import Entry, Skill, SkillInvalid, SkillNotFound, digest_of, read_zip, to_zip

_ALPHABET = string.ascii_letters + string.digits

SCHEMA = """
CREATE TABLE IF NOT EXISTS skills (
    id TEXT PRIMARY KEY, principal TEXT NOT NULL, display_name TEXT NOT NULL, name TEXT NOT NULL,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, latest_version_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS skills_principal ON skills (principal, created_at);
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY, skill_id TEXT NOT NULL, epoch TEXT NOT NULL, name TEXT NOT NULL,
    description TEXT NOT NULL, digest TEXT NOT NULL, created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS versions_skill ON versions (skill_id, created_at);
"""


def _new_id(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class SkillRow:
    id: str
    principal: str
    display_name: str
    name: str
    created_at: float
    updated_at: float
    latest_version_id: str

    def api(self) -> dict[str, object]:
        """The SDK's ``BetaSkill``."""
        return {
            "id": self.id, "type": "skill", "display_name": self.display_name, "source": {"type": "custom"},
            "latest_version_id": self.latest_version_id, "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True)
class VersionRow:
    id: str
    skill_id: str
    epoch: str
    name: str
    description: str
    digest: str
    created_at: float

    def api(self) -> dict[str, object]:
        """The SDK's ``BetaSkillVersion``."""
        return {
            "id": self.id, "type": "skill_version", "skill_id": self.skill_id, "name": self.name,
            "description": self.description, "created_at": iso(self.created_at),
        }


class SkillStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / "skills.db", timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            yield db
        finally:
            db.close()

    def blob_path(self, version_id: str) -> Path:
        return self.root / "blobs" / f"{version_id}.zip"

    # --- writes -------------------------------------------------------------------------------

    def create(self, principal: str, name: str, description: str, entries: list[Entry], display_name: str | None) -> tuple[SkillRow, VersionRow]:
        skill_id = _new_id("skill_01")
        now = time.time()
        version = self._write_version(skill_id, name, description, entries, now)
        row = SkillRow(skill_id, principal, (display_name or name)[:255], name, now, now, version.id)
        with self._db() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT INTO skills VALUES (?,?,?,?,?,?,?)", (row.id, row.principal, row.display_name, row.name,
                                                                       row.created_at, row.updated_at, row.latest_version_id))
                self._insert_version(db, version)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK") if db.in_transaction else None
                self.blob_path(version.id).unlink(missing_ok=True)
                raise
        return row, version

    def add_version(self, principal: str, skill_id: str, name: str, description: str, entries: list[Entry]) -> VersionRow:
        skill = self.get(skill_id, principal)
        if name != skill.name:
            raise SkillInvalid(f"SKILL.md: 'name' is {name!r} but this skill's name is {skill.name!r}; every version keeps the name")
        now = time.time()
        version = self._write_version(skill_id, name, description, entries, now)
        with self._db() as db:
            try:
                db.execute("BEGIN IMMEDIATE")
                self._insert_version(db, version)
                changed = db.execute("UPDATE skills SET latest_version_id=?, updated_at=? WHERE id=?", (version.id, now, skill_id)).rowcount
                if not changed:
                    raise SkillNotFound(f"Skill not found: {skill_id}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK") if db.in_transaction else None
                self.blob_path(version.id).unlink(missing_ok=True)
                raise
        return version

    def _write_version(self, skill_id: str, name: str, description: str, entries: list[Entry], now: float) -> VersionRow:
        version = VersionRow(_new_id("skver_01"), skill_id, str(int(now * 1_000_000)), name, description, digest_of(entries), now)
        path = self.blob_path(version.id)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(to_zip(name, entries))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return version

    @staticmethod
    def _insert_version(db: sqlite3.Connection, v: VersionRow) -> None:
        db.execute("INSERT INTO versions VALUES (?,?,?,?,?,?,?)", (v.id, v.skill_id, v.epoch, v.name, v.description, v.digest, v.created_at))

    def delete(self, skill_id: str, principal: str | None) -> None:
        """Removes the skill and all its versions (the GA behaviour)."""
        self.get(skill_id, principal)
        with self._db() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM versions WHERE skill_id=?", (skill_id,))]
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM versions WHERE skill_id=?", (skill_id,))
            db.execute("DELETE FROM skills WHERE id=?", (skill_id,))
            db.execute("COMMIT")
        for vid in ids:
            self.blob_path(vid).unlink(missing_ok=True)

    def delete_version(self, skill_id: str, version: str, principal: str | None) -> VersionRow:
        skill = self.get(skill_id, principal)
        row = self.version(skill_id, version, principal)
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            rest = db.execute("SELECT id FROM versions WHERE skill_id=? AND id<>? ORDER BY created_at DESC, rowid DESC LIMIT 1",
                              (skill_id, row.id)).fetchone()
            if rest is None:
                db.execute("ROLLBACK")
                raise SkillInvalid(f"{row.id} is the only version of {skill.id}; a skill holds at least one version. "
                                   "Delete the skill instead (DELETE /v1/skills/{skill_id} removes its versions).")
            db.execute("DELETE FROM versions WHERE id=?", (row.id,))
            if skill.latest_version_id == row.id:
                db.execute("UPDATE skills SET latest_version_id=?, updated_at=? WHERE id=?", (rest[0], time.time(), skill_id))
            db.execute("COMMIT")
        self.blob_path(row.id).unlink(missing_ok=True)
        return row

    # --- reads --------------------------------------------------------------------------------

    def get(self, skill_id: str, principal: str | None) -> SkillRow:
        with self._db() as db:
            r = db.execute("SELECT * FROM skills WHERE id=?", (skill_id,)).fetchone()
        if r is None or (principal is not None and r[1] != principal):
            raise SkillNotFound(f"Skill not found: {skill_id}")
        return SkillRow(*r)

    def list(self, principal: str | None, limit: int, offset: int) -> list[SkillRow]:
        query = "SELECT * FROM skills" + ("" if principal is None else " WHERE principal=?") + " ORDER BY created_at DESC, id LIMIT ? OFFSET ?"
        args = (() if principal is None else (principal,)) + (limit, offset)
        with self._db() as db:
            return [SkillRow(*r) for r in db.execute(query, args)]

    def version(self, skill_id: str, version: str, principal: str | None) -> VersionRow:
        """A version by id, by its epoch timestamp (the 2025-10-02 beta's form) or ``latest``."""
        skill = self.get(skill_id, principal)
        if version == "latest":
            version = skill.latest_version_id
        with self._db() as db:
            r = db.execute("SELECT * FROM versions WHERE skill_id=? AND (id=? OR epoch=?)", (skill_id, version, version)).fetchone()
        if r is None:
            raise SkillNotFound(f"Skill version not found: {skill_id} version {version}")
        return VersionRow(*r)

    def versions(self, skill_id: str, principal: str | None, limit: int, offset: int) -> list[VersionRow]:
        self.get(skill_id, principal)
        with self._db() as db:
            return [VersionRow(*r) for r in db.execute(
                "SELECT * FROM versions WHERE skill_id=? ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?", (skill_id, limit, offset))]

    def content(self, skill_id: str, version: str, principal: str | None) -> tuple[VersionRow, bytes]:
        row = self.version(skill_id, version, principal)
        return row, self.blob_path(row.id).read_bytes()

    # --- as sandbox skills ----------------------------------------------------------------------

    def skill(self, row: SkillRow, version: VersionRow) -> Skill:
        blob = self.blob_path(version.id)

        def load() -> list[Entry]:
            entries = read_zip(blob.read_bytes(), str(blob))
            prefix = version.name + "/"
            return [(p[len(prefix):], m, d) for p, m, d in entries if p.startswith(prefix)]

        return Skill(row.id, "custom", version.id, version.name, version.description, version.digest, "upload", load)

    def resolve(self, skill_id: str, version: str, principal: str | None) -> Skill:
        row = self.get(skill_id, principal)
        return self.skill(row, self.version(skill_id, version, principal))

    def latest_skills(self, principal: str | None) -> list[Skill]:
        skills = []
        for row in self.list(principal, 1000, 0):
            with contextlib.suppress(SkillNotFound):
                skills.append(self.skill(row, self.version(row.id, row.latest_version_id, principal)))
        return skills
