"""The Anthropic Files API subset over the local ``FileStore``, as Starlette routes.

``POST /v1/files`` (multipart, field ``file``), ``GET /v1/files``, ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}`` — enough for the ``anthropic`` SDK's
``client.beta.files.upload/list/retrieve_metadata/download/delete`` pointed at this server with
``base_url``.

Uploads are parsed as they arrive (``python-multipart``'s push parser over ``request.stream()``) and
written straight into a pending store file, so neither memory nor a second temp copy grows with the
upload; downloads stream the blob in 1 MiB chunks read off the event loop. Every store call runs in a
worker thread.

Authentication is not done here: ``principal_of(request)`` names the caller (the auth middleware
has already run); a file of another principal answers 404 exactly like a missing one.

Extensions beyond the hosted API (all optional): ``container_id`` as a query parameter or form field
on upload (the ``on_upload`` hook places the file into that container; if it fails, the upload is
undone), ``container_id`` / ``scope_id`` filters on list.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO
from urllib.parse import quote

import anyio
import anyio.to_thread
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

try:  # python-multipart >= 0.0.13 ships the module under this name
    from python_multipart.multipart import MultipartParser, parse_options_header
except ImportError:  # pragma: no cover - older python-multipart
    from multipart.multipart import MultipartParser, parse_options_header  # type: ignore[no-redef]

from .errors import CodeExecError, ContainerExpired, FileNotFound, InvalidToolInput, TooManyRequests
from .files import (
    CHUNK,
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    FileRecord,
    FileStore,
    FileTooLarge,
    PendingFile,
    StoredFileNotFound,
    guess_mime,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_BYTES = 500 * MiB
"""The hosted Files API's per-file limit."""
FORM_OVERHEAD_BYTES = 1 * MiB
"""Allowance for multipart framing and small fields on top of the file itself."""
MAX_FIELD_BYTES = 64 * 1024
"""Limit for a non-file form field."""
DRAIN_LIMIT_BYTES = 64 * MiB
"""After rejecting an oversize upload, read and discard up to this much more of the body so the
client reads the 413 rather than a reset connection (which SDKs report as a connection error and
retry). A body larger still is cut off."""
WRITE_BATCH_BYTES = 1 * MiB

OnUpload = Callable[[FileRecord, str | None], Awaitable[None]]
PrincipalOf = Callable[[Request], str]


def api_error(status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An Anthropic-style error body: ``{"type":"error","error":{"type","message"}}``."""
    return JSONResponse(
        {"type": "error", "error": {"type": error_type, "message": message}}, status_code=status, headers=headers
    )


def _not_found(file_id: str) -> JSONResponse:
    return api_error(404, "not_found_error", f"File not found: {file_id}")


def _too_large(limit: int) -> JSONResponse:
    return api_error(
        413,
        "request_too_large",
        f"Upload exceeds the maximum file size of {limit} bytes.",
        headers={"connection": "close"},
    )


async def _run(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(lambda: func(*args, **kwargs))


# --------------------------------------------------------------------------- upload parsing


class _BadRequest(Exception):
    pass


class _UploadReceiver:
    """Turns the multipart body into one pending store file (field ``file``) and small fields."""

    def __init__(self, store: FileStore, principal: str, boundary: bytes, max_file: int) -> None:
        self.store = store
        self.principal = principal
        self.max_file = max_file
        self.events: list[tuple[str, bytes]] = []
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": lambda: self.events.append(("part_begin", b"")),
                "on_part_data": lambda d, s, e: self.events.append(("part_data", bytes(d[s:e]))),
                "on_part_end": lambda: self.events.append(("part_end", b"")),
                "on_header_field": lambda d, s, e: self.events.append(("header_field", bytes(d[s:e]))),
                "on_header_value": lambda d, s, e: self.events.append(("header_value", bytes(d[s:e]))),
                "on_header_end": lambda: self.events.append(("header_end", b"")),
                "on_headers_finished": lambda: self.events.append(("headers_finished", b"")),
                "on_end": lambda: self.events.append(("end", b"")),
            },
        )
        self.pending: PendingFile | None = None
        self.part_content_type: str | None = None
        self.fields: dict[str, str] = {}
        self.finished = False
        # current part
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = b""
        self._value = b""
        self._kind: str = "skip"  # "file" | "field" | "skip"
        self._name = ""
        self._field_buf = bytearray()
        self._buf: list[bytes] = []
        self._buf_len = 0
        self._file_seen = False

    async def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise _BadRequest(f"malformed multipart body: {exc}") from None
        events, self.events = self.events, []
        for kind, data in events:
            await self._event(kind, data)

    async def _event(self, kind: str, data: bytes) -> None:
        if kind == "part_begin":
            self._headers, self._field, self._value = [], b"", b""
        elif kind == "header_field":
            self._field += data
        elif kind == "header_value":
            self._value += data
        elif kind == "header_end":
            self._headers.append((self._field.lower(), self._value))
            self._field, self._value = b"", b""
        elif kind == "headers_finished":
            await self._start_part()
        elif kind == "part_data":
            await self._part_data(data)
        elif kind == "part_end":
            if self._kind == "file":
                await self._flush()
            elif self._kind == "field":
                self.fields[self._name] = self._field_buf.decode("utf-8", errors="replace")
            self._kind = "skip"
        elif kind == "end":
            self.finished = True

    async def _start_part(self) -> None:
        headers = dict(self._headers)
        disposition, options = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
        if disposition != b"form-data" or b"name" not in options:
            raise _BadRequest("multipart part without a form-data Content-Disposition name")
        name = _decode_param(options[b"name"])
        if name == "file":
            if self._file_seen:
                raise _BadRequest("more than one 'file' part")
            self._file_seen = True
            filename = _decode_param(options.get(b"filename", b"")) or "file"
            ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
            self.part_content_type = ctype or None
            self.pending = await _run(
                self.store.begin,
                filename=filename,
                origin="upload",
                principal=self.principal,
                max_size=self.max_file,
            )
            self._kind = "file"
        elif b"filename" in options:
            self._kind = "skip"  # a file under another name: not ours
        else:
            self._kind, self._name, self._field_buf = "field", name, bytearray()

    async def _part_data(self, data: bytes) -> None:
        if self._kind == "file":
            assert self.pending is not None
            if self.pending.size + self._buf_len + len(data) > self.max_file:
                raise FileTooLarge(self.max_file, self.pending.filename)
            self._buf.append(data)
            self._buf_len += len(data)
            if self._buf_len >= WRITE_BATCH_BYTES:
                await self._flush()
        elif self._kind == "field":
            self._field_buf += data
            if len(self._field_buf) > MAX_FIELD_BYTES:
                raise _BadRequest(f"form field {self._name!r} is too long")

    async def _flush(self) -> None:
        if not self._buf or self.pending is None:
            return
        data = b"".join(self._buf)
        self._buf, self._buf_len = [], 0
        await _run(self.pending.write, data)

    def mime_type(self) -> str | None:
        """Content and name first; the part's declared type only when those know nothing."""
        assert self.pending is not None
        guessed = guess_mime(self.pending.filename, self.pending.head)
        if guessed == "application/octet-stream" and self.part_content_type and _MIME_RE.fullmatch(
            self.part_content_type
        ):
            return self.part_content_type
        return guessed

    async def abort(self) -> None:
        if self.pending is not None and not self.pending.closed:
            await _run(self.pending.abort)


_MIME_RE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_PCT_RE = re.compile(r"%([01][0-9A-Fa-f]|22)")


def _decode_param(raw: bytes) -> str:
    """A Content-Disposition parameter: UTF-8 (latin-1 as a fallback), with the HTML5 form
    encoding of ``"`` and control characters (``%22``, ``%0A``...) undone."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return _PCT_RE.sub(lambda m: chr(int(m.group(1), 16)), text)


async def _drain(request: Request, limit: int) -> None:
    """Read and discard the rest of the body (up to ``limit`` bytes)."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                return
    except Exception:  # disconnected, stream already consumed, or an outer body limit tripped
        return


# --------------------------------------------------------------------------- routes


def files_routes(
    store: FileStore,
    principal_of: PrincipalOf,
    on_upload: OnUpload | None = None,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
) -> list[Route]:
    """Routes for ``/v1/files``. ``max_upload_bytes`` caps one uploaded file (413 beyond it).

    Mount them ahead of any generic request-size limit: uploads are streamed to disk, so
    ``Settings.max_request_bytes`` (meant for JSON-RPC bodies) should not apply to them.
    """

    async def upload(request: Request) -> Response:
        principal = principal_of(request)
        ctype, params = parse_options_header(request.headers.get("content-type", ""))
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            return api_error(400, "invalid_request_error", "Expected a multipart/form-data body with a 'file' part.")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes + FORM_OVERHEAD_BYTES:
            if int(declared) <= max_upload_bytes + DRAIN_LIMIT_BYTES:
                await _drain(request, int(declared))
            return _too_large(max_upload_bytes)

        receiver = _UploadReceiver(store, principal, boundary, max_upload_bytes)
        try:
            try:
                async for chunk in request.stream():
                    await receiver.feed(chunk)
            except FileTooLarge:
                await receiver.abort()
                await _drain(request, DRAIN_LIMIT_BYTES)
                return _too_large(max_upload_bytes)
            except _BadRequest as exc:
                return api_error(400, "invalid_request_error", str(exc))
            except ClientDisconnect:
                log.info("upload aborted: client disconnected")
                return Response(status_code=400)
            if not receiver.finished:
                return api_error(400, "invalid_request_error", "Incomplete multipart body.")
            if receiver.pending is None:
                return api_error(400, "invalid_request_error", "file: Field required (a multipart part named 'file').")

            container_id = receiver.fields.get("container_id") or request.query_params.get("container_id") or None
            expires_raw = receiver.fields.get("expires_in_seconds") or request.query_params.get("expires_in_seconds")
            if expires_raw:
                try:
                    seconds = int(expires_raw)
                    if seconds <= 0:
                        raise ValueError
                except ValueError:
                    return api_error(
                        400, "invalid_request_error", "expires_in_seconds: must be a positive integer."
                    )
                receiver.pending.expires_at = datetime.now(UTC) + timedelta(seconds=seconds)
            receiver.pending.mime_type = receiver.mime_type()
            receiver.pending.container_id = container_id
            record: FileRecord = await _run(receiver.pending.commit)
        finally:
            await receiver.abort()  # no-op once committed

        if container_id is not None and on_upload is not None:
            try:
                await on_upload(record, container_id)
            except Exception as exc:
                await _run(_delete_quietly, store, record.id)
                return _attach_error(exc, container_id)
        return JSONResponse(record.to_api())

    async def list_files(request: Request) -> Response:
        principal = principal_of(request)
        q = request.query_params
        try:
            limit = int(q.get("limit", DEFAULT_LIST_LIMIT))
        except ValueError:
            return api_error(400, "invalid_request_error", "limit: must be an integer.")
        if not 1 <= limit <= MAX_LIST_LIMIT:
            return api_error(400, "invalid_request_error", f"limit: must be between 1 and {MAX_LIST_LIMIT}.")
        after_id = q.get("after_id") or None
        before_id = q.get("before_id") or None
        page = q.get("page") or None
        if page is not None:
            if not page.startswith("page_") or after_id or before_id:
                return api_error(400, "invalid_request_error", "page: invalid cursor.")
            after_id = page.removeprefix("page_")
        if after_id and before_id:
            return api_error(400, "invalid_request_error", "Give after_id or before_id, not both.")
        ids = [v for key in ("ids", "ids[]") for raw in q.getlist(key) for v in raw.split(",") if v] or None
        container_id = q.get("container_id") or q.get("scope_id") or None
        try:
            records = await _run(
                store.list,
                principal=principal,
                container_id=container_id,
                limit=None if ids else limit + 1,
                after_id=after_id,
                before_id=before_id,
                ids=ids,
            )
        except StoredFileNotFound as exc:
            return api_error(400, "invalid_request_error", f"Unknown pagination cursor: {exc.file_id}")
        has_more = False
        if not ids and len(records) > limit:
            has_more = True
            # the extra record lies beyond the page: after it going forward, before it going back
            records = records[1:] if before_id else records[:limit]
        data = [r.to_api() for r in records]
        return JSONResponse(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "next_page": f"page_{data[-1]['id']}" if has_more and not before_id and data else None,
            }
        )

    async def one_file(request: Request) -> Response:
        principal = principal_of(request)
        file_id = request.path_params["file_id"]
        try:
            if request.method == "DELETE":
                await _run(store.delete, file_id, principal)
                return JSONResponse({"id": file_id, "type": "file_deleted"})
            record: FileRecord = await _run(store.get, file_id, principal)
        except StoredFileNotFound:
            return _not_found(file_id)
        return JSONResponse(record.to_api())

    async def content(request: Request) -> Response:
        principal = principal_of(request)
        file_id = request.path_params["file_id"]
        try:
            record, fh = await _run(store.open_with_record, file_id, principal)
        except StoredFileNotFound:
            return _not_found(file_id)
        if not record.downloadable:
            await _run(fh.close)
            return api_error(400, "invalid_request_error", f"File {file_id} is not downloadable.")
        headers = {
            "content-length": str(record.size),
            "content-disposition": _content_disposition(record.filename),
            "x-content-sha256": record.sha256,
            "cache-control": "private, no-store",
            "x-content-type-options": "nosniff",
        }
        if request.method == "HEAD":
            await _run(fh.close)
            return Response(status_code=200, headers=headers, media_type=record.mime_type)
        return StreamingResponse(_stream(fh), headers=headers, media_type=record.mime_type)

    return [
        Route("/v1/files", upload, methods=["POST"], name="files_upload"),
        Route("/v1/files", list_files, methods=["GET"], name="files_list"),
        Route("/v1/files/{file_id}", one_file, methods=["GET", "DELETE"], name="files_one"),
        Route("/v1/files/{file_id}/content", content, methods=["GET"], name="files_content"),
    ]


async def _stream(fh: BinaryIO, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    try:
        while data := await anyio.to_thread.run_sync(fh.read, chunk):
            yield data
    finally:
        fh.close()


def _content_disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_").replace("\\", "_")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def _delete_quietly(store: FileStore, file_id: str) -> None:
    try:
        store.delete(file_id)
    except StoredFileNotFound:
        pass


def _attach_error(exc: Exception, container_id: str) -> JSONResponse:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, ContainerExpired | FileNotFound | LookupError):
        return api_error(404, "not_found_error", message)
    if isinstance(exc, PermissionError):
        return api_error(403, "permission_error", message)
    if isinstance(exc, InvalidToolInput | ValueError):
        return api_error(400, "invalid_request_error", message)
    if isinstance(exc, TooManyRequests):
        return api_error(429, "rate_limit_error", message)
    if isinstance(exc, CodeExecError):
        return api_error(503, "api_error", f"Could not attach the file to container {container_id}: {message}")
    log.exception("attaching an upload to container %s failed", container_id, exc_info=exc)
    return api_error(500, "api_error", f"Could not attach the file to container {container_id}.")


__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "api_error", "files_routes"]
