"""Agent Skills: folders with a ``SKILL.md`` that sandboxes see read-only at ``/skills/<name>/``.

Two sources: folders given with ``--skills DIR`` (validated at start-up; in every sandbox) and
skills uploaded through the Skills API (``skills_store``; per principal, loaded where selected).
A sandbox's skill set is fixed when it is created: its files are baked into a small image layer
derived from the sandbox image (``sandboxes.ensure_skills_image``), so ``/skills`` is part of the
read-only root filesystem — no mount, no host path, the same on runc and gVisor.

This module has no docker and no HTTP: parsing, validation, the catalog and the build context.
"""

from __future__ import annotations

import hashlib
import io
import re
import stat
import tarfile
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .config import Settings
    from .skills_store import SkillStore

SKILLS_DIR = "/skills"
SANDBOX_UID = 1000
MAX_SKILLS = 20
"""Skills per sandbox (the hosted per-request limit)."""
MAX_SKILL_BYTES = 30 * 1024 * 1024
"""Uncompressed size of one skill (the hosted upload limit)."""
MAX_SKILL_FILES = 2000
MAX_ZIP_RATIO = 200
"""A zip member whose declared size is this many times its compressed size is a bomb."""
ANTHROPIC_SKILLS = ("pptx", "xlsx", "docx", "pdf")
MAX_NAME = 64
MAX_DESCRIPTION = 1024
RESERVED_WORDS = ("anthropic", "claude")
_NAME_RE = re.compile(r"[a-z0-9-]+")
_XML_TAG = re.compile(r"<\s*/?\s*[A-Za-z!?][^>]*>")
_KEY_RE = re.compile(r"([A-Za-z0-9_-]+)\s*:(?:\s+(.*))?$")

SkillType = Literal["anthropic", "custom"]
Entry = tuple[str, int, bytes]
"""One file of a skill: (path inside the skill's folder, POSIX mode bits, bytes)."""


class SkillInvalid(ValueError):
    """A skill breaks a rule; the message names the file and the rule."""


class SkillNotFound(LookupError):
    """A selected skill does not exist (or is another principal's); the message says what to do."""


# --------------------------------------------------------------------------- SKILL.md


def parse_front_matter(text: str, where: str) -> dict[str, str]:
    """The YAML front matter of a SKILL.md as top-level ``key -> text``.

    A deliberately small, strict subset of YAML (no dependency): ``key: value`` lines with plain,
    single- or double-quoted scalars, ``|`` / ``>`` block scalars, and indented lines under a key
    (nested maps such as ``metadata:``), kept as raw text. Anything else is refused."""
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise SkillInvalid(f"{where}: must start with YAML front matter between '---' lines")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        raise SkillInvalid(f"{where}: the front matter has no closing '---' line") from None
    fields: dict[str, str] = {}
    block: list[str] | None = None
    key = ""
    style = ""
    for lineno, line in enumerate(lines[1:end], start=2):
        if not line.strip() or line.lstrip().startswith("#") and not line.startswith((" ", "\t")):
            if block is not None:
                block.append("")
            continue
        if line.startswith((" ", "\t")):
            if block is None:
                raise SkillInvalid(f"{where}: line {lineno}: indented line outside a key")
            block.append(line.strip())
            continue
        if block is not None:
            fields[key] = _join_block(block, style)
            block = None
        match = _KEY_RE.match(line)
        if match is None:
            raise SkillInvalid(f"{where}: line {lineno}: expected 'key: value' in the front matter")
        key, value = match.group(1), (match.group(2) or "").strip()
        if key in fields:
            raise SkillInvalid(f"{where}: line {lineno}: duplicate key {key!r}")
        if value in ("", "|", ">", "|-", ">-", "|+", ">+"):
            block, style = [], value[:1]
            continue
        fields[key] = _scalar(value, where, lineno)
    if block is not None:
        fields[key] = _join_block(block, style)
    return fields


def _join_block(lines: list[str], style: str) -> str:
    while lines and not lines[-1]:
        lines.pop()
    if style == "|":
        return "\n".join(lines)
    return " ".join(line for line in lines if line)  # folded (and a nested map, kept as raw text)


def _scalar(value: str, where: str, lineno: int) -> str:
    if value[0] in "\"'":
        quote = value[0]
        if len(value) < 2 or not value.endswith(quote):
            raise SkillInvalid(f"{where}: line {lineno}: unterminated quoted value")
        inner = value[1:-1]
        if quote == "'":
            return inner.replace("''", "'")
        return inner.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
    if value[0] in "[{&*!%@`":
        raise SkillInvalid(f"{where}: line {lineno}: only plain or quoted text values are supported here")
    return re.sub(r"\s+#.*$", "", value)


def validate_front_matter(fields: dict[str, str], where: str) -> tuple[str, str]:
    """(name, description) of a SKILL.md, checked against the Agent Skills rules."""
    name = fields.get("name", "").strip()
    description = fields.get("description", "").strip()
    if not name:
        raise SkillInvalid(f"{where}: front matter field 'name' is missing or empty")
    if len(name) > MAX_NAME:
        raise SkillInvalid(f"{where}: 'name' is {len(name)} characters; at most {MAX_NAME} are allowed")
    if not _NAME_RE.fullmatch(name):
        raise SkillInvalid(f"{where}: 'name' {name!r} may contain only lowercase letters, digits and hyphens")
    for word in RESERVED_WORDS:
        if word in name:
            raise SkillInvalid(f"{where}: 'name' {name!r} contains the reserved word {word!r}")
    if not description:
        raise SkillInvalid(f"{where}: front matter field 'description' is missing or empty")
    if len(description) > MAX_DESCRIPTION:
        raise SkillInvalid(f"{where}: 'description' is {len(description)} characters; at most {MAX_DESCRIPTION} are allowed")
    if _XML_TAG.search(description):
        raise SkillInvalid(f"{where}: 'description' must not contain XML tags")
    return name, description


def read_skill_md(data: bytes, where: str) -> tuple[str, str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SkillInvalid(f"{where}: is not UTF-8 text") from None
    return validate_front_matter(parse_front_matter(text, where), where)


# --------------------------------------------------------------------------- skills


@dataclass(frozen=True)
class Skill:
    skill_id: str
    type: SkillType
    version: str
    name: str
    """The folder under /skills."""
    description: str
    digest: str
    """sha256 over the skill's paths, modes and bytes: what the image layer is keyed on."""
    origin: str
    """``folder`` (``--skills``) or ``upload`` (the Skills API)."""
    load: Callable[[], list[Entry]] = field(compare=False, repr=False)

    @property
    def path(self) -> str:
        return f"{SKILLS_DIR}/{self.name}"

    def container_entry(self) -> dict[str, str]:
        """The hosted ``container.skills`` item (SDK ``BetaContainerSkill``)."""
        return {"skill_id": self.skill_id, "type": self.type, "version": self.version}


def digest_of(entries: Iterable[Entry]) -> str:
    h = hashlib.sha256()
    for path, mode, data in sorted(entries):
        h.update(f"{path}\0{mode & 0o111 and 1}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def check_entries(entries: list[Entry], where: str) -> tuple[str, str]:
    """Size, count and path rules for a skill's files; (name, description) from its SKILL.md."""
    if len(entries) > MAX_SKILL_FILES:
        raise SkillInvalid(f"{where}: {len(entries)} files; at most {MAX_SKILL_FILES} are allowed")
    total = sum(len(data) for _, _, data in entries)
    if total > MAX_SKILL_BYTES:
        raise SkillInvalid(f"{where}: {total} bytes uncompressed; a skill may hold at most {MAX_SKILL_BYTES}")
    seen: set[str] = set()
    for path, _, _ in entries:
        safe_relpath(path, where)
        if path in seen:
            raise SkillInvalid(f"{where}: {path!r} appears twice")
        seen.add(path)
    skill_md = next((data for path, _, data in entries if path == "SKILL.md"), None)
    if skill_md is None:
        raise SkillInvalid(f"{where}: no SKILL.md at the top of the skill's folder")
    return read_skill_md(skill_md, f"{where}/SKILL.md")


def safe_relpath(path: str, where: str) -> str:
    if not path or "\0" in path or "\\" in path:
        raise SkillInvalid(f"{where}: {path!r} is not a valid file path")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise SkillInvalid(f"{where}: {path!r} is an absolute path; paths must be relative")
    parts = PurePosixPath(path).parts
    if any(part in ("..", ".") for part in path.split("/")) or not parts:
        raise SkillInvalid(f"{where}: {path!r} contains '..' or '.'; paths must stay inside the skill's folder")
    return path


def read_folder(folder: Path) -> list[Entry]:
    """Every file of a skill folder. Symlinks and special files are refused (a symlink would copy
    whatever it points at on this machine into every sandbox)."""
    entries: list[Entry] = []
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            raise SkillInvalid(f"{path}: is a symbolic link; skills may hold only regular files and folders")
        if stat.S_ISDIR(st.st_mode):
            continue
        if not stat.S_ISREG(st.st_mode):
            raise SkillInvalid(f"{path}: is not a regular file; skills may hold only regular files and folders")
        total += st.st_size
        if total > MAX_SKILL_BYTES:
            raise SkillInvalid(f"{folder}: more than {MAX_SKILL_BYTES} bytes; a skill may hold at most that")
        entries.append((rel, 0o755 if st.st_mode & 0o111 else 0o644, path.read_bytes()))
    return entries


def folder_skill(folder: Path) -> Skill:
    entries = read_folder(folder)
    name, description = check_entries(entries, str(folder))
    digest = digest_of(entries)
    kind: SkillType = "anthropic" if name in ANTHROPIC_SKILLS else "custom"
    frozen = list(entries)
    return Skill(name, kind, "local-" + digest[:12], name, description, digest, "folder", lambda: frozen)


def load_folders(dirs: Iterable[Path]) -> list[Skill]:
    """The skills of ``--skills`` directories: each subfolder with a SKILL.md (or the directory
    itself when it has one). Raises SkillInvalid naming the file and the rule."""
    found: dict[str, Skill] = {}
    for d in dirs:
        d = Path(d).expanduser()
        if not d.is_dir():
            raise SkillInvalid(f"{d}: --skills directory does not exist or is not a directory")
        folders = [d] if (d / "SKILL.md").is_file() else sorted(p for p in d.iterdir() if p.is_dir() and (p / "SKILL.md").exists())
        for folder in folders:
            skill = folder_skill(folder)
            if skill.name in found:
                raise SkillInvalid(f"{folder}/SKILL.md: name {skill.name!r} is also used by another skills folder")
            found[skill.name] = skill
    if len(found) > MAX_SKILLS:
        raise SkillInvalid(f"{len(found)} skills in the --skills directories; at most {MAX_SKILLS} are allowed")
    return sorted(found.values(), key=lambda s: s.name)


# --------------------------------------------------------------------------- archives


def read_zip(data: bytes, where: str = "the archive") -> list[Entry]:
    """The files of a zip upload, refusing links, device files, unsafe paths and bombs. Sizes are
    counted as members are inflated (never trusting the headers alone)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SkillInvalid(f"{where}: is not a valid zip archive") from None
    members = archive.infolist()
    if len(members) > MAX_SKILL_FILES:
        raise SkillInvalid(f"{where}: {len(members)} entries; at most {MAX_SKILL_FILES} are allowed")
    entries: list[Entry] = []
    total = 0
    for info in members:
        name = info.filename
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise SkillInvalid(f"{where}: {name!r} is a symbolic link; skills may hold only regular files and folders")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise SkillInvalid(f"{where}: {name!r} is a device or special file; skills may hold only regular files and folders")
        safe_relpath(name.rstrip("/") or name, where)
        if info.is_dir():
            continue
        if info.file_size > MAX_SKILL_BYTES or info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1) + 1024 * 1024:
            raise SkillInvalid(f"{where}: {name!r} inflates to {info.file_size} bytes (a zip bomb?); refused")
        chunks = []
        try:
            with archive.open(info) as fh:
                while chunk := fh.read(1024 * 1024):
                    total += len(chunk)
                    if total > MAX_SKILL_BYTES:
                        raise SkillInvalid(f"{where}: inflates past {MAX_SKILL_BYTES} bytes (a zip bomb?); refused")
                    chunks.append(chunk)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, OSError) as exc:
            raise SkillInvalid(f"{where}: {name!r} cannot be read ({exc})") from None
        entries.append((name, 0o755 if mode & 0o111 else 0o644, b"".join(chunks)))
    return entries


def strip_top_dir(entries: list[Entry], where: str) -> tuple[str, list[Entry]]:
    """The single top-level folder every uploaded path must share, and the paths inside it."""
    tops = {path.split("/", 1)[0] for path, _, _ in entries if "/" in path}
    loose = [path for path, _, _ in entries if "/" not in path]
    if not entries:
        raise SkillInvalid(f"{where}: no files")
    if loose or len(tops) != 1:
        shown = sorted(tops | set(loose))[:5]
        raise SkillInvalid(
            f"{where}: all files must be in one top-level folder (e.g. my-skill/SKILL.md); found {shown}"
        )
    top = tops.pop()
    return top, [(path.split("/", 1)[1], mode, data) for path, mode, data in entries]


def to_zip(name: str, entries: list[Entry]) -> bytes:
    """A skill version's content as the archive the download returns: ``<name>/...``."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, mode, data in sorted(entries):
            info = zipfile.ZipInfo(f"{name}/{path}", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | mode) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return out.getvalue()


# --------------------------------------------------------------------------- sets and images


@dataclass(frozen=True)
class SkillSet:
    skills: tuple[Skill, ...] = ()

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for s in self.skills:
            h.update(f"{s.name}\0{s.digest}\0".encode())
        return h.hexdigest()

    def entries(self) -> list[dict[str, str]]:
        return [s.container_entry() for s in self.skills]

    def build_context(self, base_image: str) -> bytes:
        """A docker build context (tar) of ``FROM base`` plus the skills under /skills. The files
        belong to the sandbox user, so that a write is refused by the read-only root filesystem
        itself (EROFS) on every runtime: gVisor checks ownership before the mount's read-only flag,
        and would otherwise answer EACCES where runc answers EROFS."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            dockerfile = (
                f"FROM {base_image}\nCOPY --chown={SANDBOX_UID}:{SANDBOX_UID} skills/ {SKILLS_DIR}/\n"
                f'LABEL io.mcp-codeexec.skills-image="1" io.mcp-codeexec.skills-digest="{self.digest}"\n'
            ).encode()
            _add(tar, "Dockerfile", 0o644, dockerfile, owner=0)
            for skill in self.skills:
                dirs: set[str] = set()
                for path, mode, data in skill.load():
                    parts = f"{skill.name}/{path}".split("/")
                    for i in range(1, len(parts)):
                        d = "/".join(parts[:i])
                        if d not in dirs:
                            dirs.add(d)
                            _add(tar, f"skills/{d}", 0o755, None)
                    _add(tar, f"skills/{skill.name}/{path}", mode, data)
        return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, mode: int, data: bytes | None, owner: int = SANDBOX_UID) -> None:
    info = tarfile.TarInfo(name)
    info.mode = mode
    info.uid = info.gid = owner
    info.mtime = 0
    if data is None:
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


@dataclass(frozen=True)
class SkillRef:
    """A request's selection item (SDK ``BetaSkillParams``)."""

    type: str
    skill_id: str
    version: str = "latest"

    @classmethod
    def parse(cls, value: Any) -> SkillRef:
        if isinstance(value, SkillRef):
            return value
        if isinstance(value, str):
            return cls("custom", value)
        if isinstance(value, dict) and isinstance(value.get("skill_id"), str) and value.get("type") in ("anthropic", "custom"):
            version = value.get("version") or "latest"
            if not isinstance(version, str):
                raise SkillNotFound(f"skill {value['skill_id']!r}: 'version' must be a string")
            return cls(value["type"], value["skill_id"], version)
        raise SkillNotFound(
            f"a skill is selected as {{'type': 'anthropic' | 'custom', 'skill_id': ..., 'version'?: ...}}; got {value!r}"
        )


class Catalog:
    """Folder skills (fixed at start-up) and the principal-scoped uploaded ones (``SkillStore``)."""

    def __init__(self, folder_skills: list[Skill], store_root: Path | None, database_url: str | None = None) -> None:
        self.folder = tuple(folder_skills)
        self._store_root = store_root
        self._database_url = database_url  # postgresql://…: uploaded skills shared by replicas
        self._store: SkillStore | None = None
        self._lock = threading.Lock()

    @property
    def store(self) -> SkillStore:
        with self._lock:
            if self._store is None:
                from .skills_store import SkillStore

                assert self._store_root is not None
                if self._database_url and self._database_url.startswith(("postgres://", "postgresql://")):
                    from .pg_store import PgSkillStore

                    self._store = PgSkillStore(self._database_url, self._store_root)
                else:
                    self._store = SkillStore(self._store_root)
            return self._store

    def folder_set(self) -> SkillSet:
        return SkillSet(self.folder)

    def uploaded(self, principal: str) -> list[Skill]:
        """The latest version of each skill ``principal`` itself uploaded. For ``local`` (stdio, the
        Python API, ``--no-auth``) that is what was uploaded as ``local``, not every token holder's:
        the default set must not grow with other people's uploads."""
        if self._store_root is None or not (self._store_root / "skills.db").exists():
            return []
        return self.store.latest_skills(principal)

    def default_for(self, principal: str) -> SkillSet:
        """What a sandbox gets when nobody selected: the folder skills and the principal's uploads."""
        return self._combine(list(self.uploaded(principal)), "the folder and uploaded skills")

    def resolve(self, refs: Iterable[Any], principal: str) -> SkillSet:
        """The folder skills plus the selected ones. Raises SkillNotFound with what to do."""
        chosen: list[Skill] = []
        refs = [SkillRef.parse(r) for r in refs]
        if len(refs) > MAX_SKILLS:
            raise SkillNotFound(f"{len(refs)} skills selected; at most {MAX_SKILLS} per container")
        for ref in refs:
            chosen.append(self._one(ref, principal))
        return self._combine(chosen, "the selected and folder skills")

    def _one(self, ref: SkillRef, principal: str) -> Skill:
        local = next((s for s in self.folder if s.skill_id == ref.skill_id), None)
        if ref.type == "anthropic":
            if local is None:
                hint = f" ({', '.join(ANTHROPIC_SKILLS)} are Anthropic's)" if ref.skill_id not in ANTHROPIC_SKILLS else ""
                raise SkillNotFound(
                    f"Anthropic's skill {ref.skill_id!r}{hint} is not shipped with mcp-codeexec. To use it, put a "
                    f"folder {ref.skill_id}/ with its SKILL.md (front matter name: {ref.skill_id}) and files into a "
                    f"directory passed with --skills DIR (or MCP_CODEEXEC_SKILLS); Anthropic publishes the sources at "
                    f"https://github.com/anthropics/skills. It is then loaded under the id {ref.skill_id!r}."
                )
            return local
        if local is not None:
            return local
        if self._store_root is None:
            raise SkillNotFound(f"no skill {ref.skill_id!r}")
        return self.store.resolve(ref.skill_id, ref.version, None if principal == "local" else principal)

    def _combine(self, chosen: list[Skill], what: str) -> SkillSet:
        by_name: dict[str, Skill] = {s.name: s for s in self.folder}
        for skill in chosen:
            other = by_name.get(skill.name)
            if other is not None and other.skill_id != skill.skill_id:
                raise SkillNotFound(
                    f"skills {other.skill_id!r} and {skill.skill_id!r} both use the folder /skills/{skill.name}; select one"
                )
            by_name[skill.name] = skill
        if len(by_name) > MAX_SKILLS:
            raise SkillNotFound(f"{what} come to {len(by_name)} skills; at most {MAX_SKILLS} per container")
        return SkillSet(tuple(sorted(by_name.values(), key=lambda s: s.name)))

    def describe(self, skills: Iterable[Skill] | None = None) -> str:
        """Level-1 disclosure: one line per skill (name, path, description)."""
        listed = list(self.folder if skills is None else skills)
        if not listed:
            return ""
        lines = [(
            "Skills (folders of instructions and scripts, read-only): when a task matches one, first read its "
            "SKILL.md with the text editor or cat, then follow it."
        )]
        lines += [f"- {s.name} ({s.path}/SKILL.md): {s.description}" for s in listed]
        return "\n".join(lines)


_catalogs: dict[tuple[Any, ...], Catalog] = {}
_catalogs_lock = threading.Lock()


def catalog_for(settings: Settings) -> Catalog:
    """The settings' catalog, built (and validated) once per process. Raises SkillInvalid."""
    dirs = tuple(str(Path(d).expanduser().resolve()) for d in settings.skills)
    database_url = getattr(settings, "database_url", None)
    key = (dirs, str(settings.data_dir), database_url)
    with _catalogs_lock:
        catalog = _catalogs.get(key)
        if catalog is None:
            catalog = _catalogs[key] = Catalog(load_folders(Path(d) for d in dirs), settings.data_dir / "skills", database_url)
        return catalog
