"""The Anthropic Skills API subset over the local ``SkillStore``, as Starlette routes.

``POST /v1/skills`` (multipart ``files[]``, optional ``display_name``), ``GET /v1/skills``,
``GET``/``DELETE /v1/skills/{id}``, ``POST``/``GET /v1/skills/{id}/versions``,
``GET``/``DELETE /v1/skills/{id}/versions/{version}`` and ``GET …/{version}/content`` (a zip) —
the shapes of the ``anthropic`` SDK's ``client.beta.skills`` (``BetaSkill``, ``BetaSkillVersion``,
cursor pages ``{data, has_more, next_page}``), so that SDK works pointed at this server.

An upload is either the skill's files, each named ``<folder>/<path>`` (what the SDK's
``files_from_dir`` sends), or one ``.zip`` of that folder. Both are checked by the same rules
(``skills.check_entries``); a zip additionally refuses links, device files and bombs.
Authentication is the HTTP app's; a skill of another principal answers 404 like a missing one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .files_api import api_error
from .skills import (
    MAX_SKILL_BYTES,
    MAX_SKILL_FILES,
    Entry,
    SkillInvalid,
    SkillNotFound,
    check_entries,
    read_zip,
    safe_relpath,
    strip_top_dir,
)
from .skills_store import SkillStore

log = logging.getLogger(__name__)

PrincipalOf = Callable[[Request], str]
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


async def _run(func: Callable[..., Any], *args: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: func(*args))


def _owner(principal: str) -> str | None:
    return None if principal == "local" else principal


def _page(request: Request) -> tuple[int, int] | JSONResponse:
    raw_limit = request.query_params.get("limit")
    raw_page = request.query_params.get("page") or "0"
    try:
        limit = DEFAULT_LIMIT if raw_limit in (None, "") else int(raw_limit)
        offset = int(raw_page.removeprefix("page_"))
    except ValueError:
        return api_error(400, "invalid_request_error", "limit must be an integer and page a token from next_page")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        return api_error(400, "invalid_request_error", f"limit must be between 1 and {MAX_LIMIT}")
    return limit, offset


def _paged(rows: list[Any], limit: int, offset: int) -> JSONResponse:
    more = len(rows) > limit
    return JSONResponse({"data": [r.api() for r in rows[:limit]], "has_more": more,
                         "next_page": f"page_{offset + limit}" if more else None})


async def read_upload(request: Request) -> tuple[list[Entry], str | None]:
    """The uploaded skill's files (its folder stripped) and ``display_name``. Raises SkillInvalid."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise SkillInvalid("the request must be multipart/form-data with the skill's files in 'files[]'")
    try:
        form = await request.form(max_files=MAX_SKILL_FILES + 1, max_fields=50)
    except HTTPException as exc:  # starlette's answer to a malformed or over-long form
        raise SkillInvalid(f"the upload is not a valid form: {exc.detail}") from None
    try:
        display_name = form.get("display_name")
        uploads = [v for k, v in form.multi_items() if k in ("files[]", "files") and isinstance(v, UploadFile)]
        if not uploads:
            raise SkillInvalid("no files: upload the skill's folder as 'files[]' parts named <folder>/<path>")
        entries: list[Entry] = []
        total = 0
        for upload in uploads:
            data = await upload.read(MAX_SKILL_BYTES + 1 - total)
            total += len(data)
            if total > MAX_SKILL_BYTES:
                raise SkillInvalid(f"the upload is over {MAX_SKILL_BYTES} bytes; a skill may hold at most that")
            entries.append((upload.filename or "", 0o644, data))
    finally:
        await form.close()
    if len(entries) == 1 and entries[0][0].lower().endswith(".zip"):
        entries = await _run(read_zip, entries[0][2], entries[0][0])
    else:
        for path, _, _ in entries:
            safe_relpath(path, "upload")
    if display_name is not None and (not isinstance(display_name, str) or len(display_name) > 255 or "\n" in display_name):
        raise SkillInvalid("display_name must be one line of at most 255 characters")
    return entries, display_name or None


def _checked(entries: list[Entry]) -> tuple[str, str, list[Entry]]:
    top, inner = strip_top_dir(entries, "upload")
    name, description = check_entries(inner, top)
    return name, description, inner


def skills_routes(store_of: Callable[[], SkillStore], principal_of: PrincipalOf) -> list[Route]:
    def failure(exc: Exception) -> JSONResponse:
        if isinstance(exc, SkillNotFound):
            return api_error(404, "not_found_error", str(exc))
        return api_error(400, "invalid_request_error", str(exc))

    async def create_skill(request: Request) -> Response:
        try:
            entries, display_name = await read_upload(request)
            name, description, inner = await _run(_checked, entries)
            row, _ = await _run(store_of().create, principal_of(request), name, description, inner, display_name)
        except (SkillInvalid, SkillNotFound) as exc:
            return failure(exc)
        return JSONResponse(row.api())

    async def list_skills(request: Request) -> Response:
        page = _page(request)
        if isinstance(page, JSONResponse):
            return page
        source = request.query_params.get("source")
        if source not in (None, "", "custom", "anthropic"):
            return api_error(400, "invalid_request_error", "source must be 'custom' or 'anthropic'")
        limit, offset = page
        rows = [] if source == "anthropic" else await _run(store_of().list, _owner(principal_of(request)), limit + 1, offset)
        return _paged(rows, limit, offset)

    async def get_skill(request: Request) -> Response:
        try:
            row = await _run(store_of().get, request.path_params["skill_id"], _owner(principal_of(request)))
        except SkillNotFound as exc:
            return failure(exc)
        return JSONResponse(row.api())

    async def delete_skill(request: Request) -> Response:
        skill_id = request.path_params["skill_id"]
        try:
            await _run(store_of().delete, skill_id, _owner(principal_of(request)))
        except SkillNotFound as exc:
            return failure(exc)
        return JSONResponse({"id": skill_id, "type": "skill_deleted"})

    async def create_version(request: Request) -> Response:
        skill_id = request.path_params["skill_id"]
        try:
            await _run(store_of().get, skill_id, _owner(principal_of(request)))
            entries, _ = await read_upload(request)
            name, description, inner = await _run(_checked, entries)
            version = await _run(store_of().add_version, _owner(principal_of(request)), skill_id, name, description, inner)
        except (SkillInvalid, SkillNotFound) as exc:
            return failure(exc)
        return JSONResponse(version.api())

    async def list_versions(request: Request) -> Response:
        page = _page(request)
        if isinstance(page, JSONResponse):
            return page
        limit, offset = page
        try:
            rows = await _run(store_of().versions, request.path_params["skill_id"], _owner(principal_of(request)), limit + 1, offset)
        except SkillNotFound as exc:
            return failure(exc)
        return _paged(rows, limit, offset)

    async def get_version(request: Request) -> Response:
        try:
            row = await _run(store_of().version, request.path_params["skill_id"], request.path_params["version"],
                             _owner(principal_of(request)))
        except SkillNotFound as exc:
            return failure(exc)
        return JSONResponse(row.api())

    async def delete_version(request: Request) -> Response:
        try:
            row = await _run(store_of().delete_version, request.path_params["skill_id"], request.path_params["version"],
                             _owner(principal_of(request)))
        except (SkillInvalid, SkillNotFound) as exc:
            return failure(exc)
        return JSONResponse({"id": row.id, "type": "skill_version_deleted"})

    async def version_content(request: Request) -> Response:
        try:
            row, data = await _run(store_of().content, request.path_params["skill_id"], request.path_params["version"],
                                   _owner(principal_of(request)))
        except SkillNotFound as exc:
            return failure(exc)
        return Response(data, media_type="application/zip",
                        headers={"content-disposition": f'attachment; filename="{row.name}.zip"'})

    return [
        Route("/v1/skills", create_skill, methods=["POST"]),
        Route("/v1/skills", list_skills, methods=["GET"]),
        Route("/v1/skills/{skill_id}", get_skill, methods=["GET"]),
        Route("/v1/skills/{skill_id}", delete_skill, methods=["DELETE"]),
        Route("/v1/skills/{skill_id}/versions", create_version, methods=["POST"]),
        Route("/v1/skills/{skill_id}/versions", list_versions, methods=["GET"]),
        Route("/v1/skills/{skill_id}/versions/{version}", get_version, methods=["GET"]),
        Route("/v1/skills/{skill_id}/versions/{version}", delete_version, methods=["DELETE"]),
        Route("/v1/skills/{skill_id}/versions/{version}/content", version_content, methods=["GET"]),
    ]
