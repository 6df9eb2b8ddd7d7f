"""Stand-in servers for the egress allow-list tests: nothing they do leaves this machine.

``standin()`` makes an internal Docker network (``internal: true``: no route off the machine), starts a
container of the sandbox image on it that makes its own test CA, and serves over TLS on :443 (and
plainly on :8080) a PEP 503 simple index with one tiny wheel, ``tinypkg``. Every request is logged
(SNI and Host) so a test can say what reached it. The allow-list proxy is attached to this network
(``egress_network``) and allowed names are mapped to the stand-in with ``mirrors``: so even the
proxy has no way off the machine during the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import docker

SERVER = r'''
import http.server, json, os, socketserver, ssl, subprocess, sys, threading
names = sys.argv[1].split(",")
os.chdir("/tmp")
san = ",".join("DNS:" + n for n in names)
run = lambda *a: subprocess.run(a, check=True, capture_output=True)
run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=standin-ca", "-days", "2",
    "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE")
run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + names[0], "-keyout", "srv.key", "-out", "srv.csr")
open("ext", "w").write("subjectAltName=" + san + "\nbasicConstraints=CA:FALSE\n")
run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2",
    "-out", "srv.pem", "-extfile", "ext")
files = json.loads(os.environ["STANDIN_FILES"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sni = getattr(self.connection, "standin_sni", None)
        print(json.dumps({"path": self.path, "host": self.headers.get("Host"), "sni": sni}), flush=True)
        body = files.get(self.path.split("#")[0])
        if body is None:
            body, code = "standin " + str(self.headers.get("Host")), 200 if self.path == "/" else 404
        else:
            code = 200
        data = body.encode("latin-1")
        self.send_response(code); self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", "text/html" if self.path.startswith("/simple/") else "application/octet-stream")
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("srv.pem", "srv.key")
def remember(sock, name, _ctx): sock.standin_sni = name
ctx.sni_callback = remember
tls = S(("0.0.0.0", 443), H)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
plain = S(("0.0.0.0", 8080), H)
threading.Thread(target=plain.serve_forever, daemon=True).start()
print("READY", flush=True)
tls.serve_forever()
'''


def tiny_wheel(name: str = "tinypkg", version: str = "1.0") -> tuple[str, bytes]:
    """A minimal pure-Python wheel whose module says hello."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": b'HELLO = "hello from tinypkg"\n',
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: standin\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}.dist-info/RECORD,,")
        zf.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return f"{dist}-py3-none-any.whl", buf.getvalue()


@dataclass
class StandIn:
    network: str
    address: str
    container: Any

    @property
    def tls(self) -> str:
        return f"{self.address}:443"

    @property
    def plain(self) -> str:
        return f"{self.address}:8080"

    def ca_pem(self) -> str:
        return self.container.exec_run(["cat", "/tmp/ca.pem"]).output.decode()

    def requests(self) -> list[str]:
        return [line for line in self.container.logs().decode().splitlines() if line.startswith("{")]


@contextmanager
def standin(image: str, names: list[str]) -> Iterator[StandIn]:
    client = docker.from_env()
    tag = secrets.token_hex(4)
    filename, wheel = tiny_wheel()
    sha = hashlib.sha256(wheel).hexdigest()
    files = {
        "/simple/tinypkg/": f'<html><body><a href="/packages/{filename}#sha256={sha}">{filename}</a></body></html>',
        f"/packages/{filename}": wheel.decode("latin-1"),
    }
    net = client.networks.create(f"mcp-codeexec-egtest-{tag}", driver="bridge", internal=True,
                                 labels={"io.mcp-codeexec.test": "egress"})
    container = None
    try:
        import json

        container = client.containers.run(
            image, ["-c", SERVER, ",".join(names)], entrypoint="python3", name=f"mcp-codeexec-egtest-{tag}",
            detach=True, network=net.name, user="1000:1000", cap_drop=["ALL"], read_only=True,
            tmpfs={"/tmp": "rw,size=16m"}, environment={"STANDIN_FILES": json.dumps(files)},
            labels={"io.mcp-codeexec.test": "egress"}, mem_limit=256 * 2**20,
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},  # :443 without a capability
        )
        deadline = time.monotonic() + 60
        while b"READY" not in container.logs():
            container.reload()
            if container.status == "exited" or time.monotonic() > deadline:
                raise RuntimeError("stand-in server did not start: " + container.logs().decode()[-2000:])
            time.sleep(0.2)
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][net.name]["IPAddress"]
        yield StandIn(net.name, address, container)
    finally:
        if container is not None:
            container.remove(force=True)
        net.reload()
        for attached in net.containers:  # a proxy a failed test left connected
            attached.remove(force=True) if attached.name.startswith("mcp-codeexec-egress-") else net.disconnect(attached, force=True)
        net.remove()
