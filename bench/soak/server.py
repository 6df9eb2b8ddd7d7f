"""Soak server: the real HTTP app (auth off, loopback) over a backend that runs nothing; an ASGI
wrapper logs every request's X-Soak-Id at arrival, response start and end."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import uvicorn

from mcp_codeexec.config import load_settings
from mcp_codeexec.files import FileStore
from mcp_codeexec.http_app import create_http_app
from tests.support.dummy_backend import DummyBackend

port, data, logpath = int(sys.argv[1]), sys.argv[2], sys.argv[3]
settings = load_settings(data_dir=data, no_auth=True, host="127.0.0.1", port=port, http_max_sessions_per_principal=100000,
                         http_calls_per_minute=0)
app = create_http_app(settings, backend=DummyBackend(), store=FileStore(data + "/files"))
log = open(logpath, "a", buffering=1)  # noqa: SIM115 - the run's log, open for the whole run

async def traced(scope, receive, send):
    if scope["type"] != "http":
        return await app(scope, receive, send)
    rid = dict(scope["headers"]).get(b"x-soak-id", b"-").decode()
    log.write(f"{time.monotonic():.4f} arrive {rid} {scope['method']}\n")
    async def send_traced(message):
        if message["type"] == "http.response.start":
            log.write(f"{time.monotonic():.4f} start {rid} {message['status']}\n")
        elif message["type"] == "http.response.body" and not message.get("more_body"):
            log.write(f"{time.monotonic():.4f} end {rid}\n")
        await send(message)
    await app(scope, receive, send_traced)

uvicorn.run(traced, host="127.0.0.1", port=port, log_level="warning", log_config=None)
