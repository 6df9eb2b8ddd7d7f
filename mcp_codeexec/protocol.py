"""The agent wire format (see docs/DESIGN.md, "Agent protocol v1").

A frame is ``>II`` (json_len, blob_len), then the JSON object, then the blob. The in-container
agent carries its own copy of these few lines because it must stay stdlib-only and self-contained.
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">II")
MAX_JSON = 128 * 1024 * 1024
MAX_BLOB = 4 * 1024 * 1024
CHUNK = 1024 * 1024
PROTOCOL_VERSION = 1


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame."""


def encode_frame(message: dict[str, Any], blob: bytes = b"") -> bytes:
    body = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    if len(body) > MAX_JSON or len(blob) > MAX_BLOB:
        raise ProtocolError("frame too large")
    return HEADER.pack(len(body), len(blob)) + body + blob


def check_header(json_len: int, blob_len: int) -> None:
    if json_len > MAX_JSON or blob_len > MAX_BLOB or json_len == 0:
        raise ProtocolError(f"bad frame header ({json_len}, {blob_len})")


def decode_json(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body.decode("utf-8", "surrogatepass"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"bad frame body: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("id"), int):
        raise ProtocolError("frame is not an object with an integer id")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes, get complete (message, blob) frames."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[dict[str, Any], bytes]]:
        self._buf += data
        frames: list[tuple[dict[str, Any], bytes]] = []
        while len(self._buf) >= HEADER.size:
            json_len, blob_len = HEADER.unpack_from(self._buf)
            check_header(json_len, blob_len)
            end = HEADER.size + json_len + blob_len
            if len(self._buf) < end:
                break
            body = bytes(self._buf[HEADER.size : HEADER.size + json_len])
            blob = bytes(self._buf[HEADER.size + json_len : end])
            del self._buf[:end]
            frames.append((decode_json(body), blob))
        return frames
