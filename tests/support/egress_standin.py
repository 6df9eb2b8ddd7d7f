"""Stand-in servers for the egress allow-list tests: nothing they do leaves this machine.

``standin()`` makes an internal Docker network (``internal: true``: no route off the machine), starts a
container of the sandbox image on it that makes its own test CA, and serves over TLS on :443 (or
``tls_port``) (and
plainly on :8080) a PEP 503 simple index with one tiny wheel, ``tinypkg``; or any other files a test
gives (``files``: an npm registry's package document and tarball), and with ``git_repo`` a git
repository over smart HTTP (``git http-backend`` as a CGI, on an image that has git). Every request
is logged (method, path, SNI and Host) so a test can say what reached it. The allow-list proxy is attached to this network
(``egress_network``) and allowed names are mapped to the stand-in with ``mirrors``: so even the
proxy has no way off the machine during the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
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
repo = os.environ.get("STANDIN_GIT")  # "owner/name": a one-commit repository served at /owner/name.git
if repo:
    git = lambda *a: run("git", "-c", "user.name=standin", "-c", "user.email=standin@standin.test", *a)
    git("init", "-q", "-b", "main", "/tmp/src")
    open("/tmp/src/README", "w").write("hello from " + repo + "\n")
    git("-C", "/tmp/src", "add", "README")
    git("-C", "/tmp/src", "commit", "-q", "-m", "first")
    git("clone", "-q", "--bare", "/tmp/src", "/tmp/git/" + repo + ".git")
class H(http.server.BaseHTTPRequestHandler):
    def log(self):
        sni = getattr(self.connection, "standin_sni", None)
        entry = {"path": self.path, "host": self.headers.get("Host"), "sni": sni}
        if self.command != "GET":
            entry["method"] = self.command
        print(json.dumps(entry), flush=True)
    def reply(self, code, data, ctype, headers=()):
        self.send_response(code); self.send_header("Content-Length", str(len(data)))
        self.send_header("Content-Type", ctype)
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
    def git_backend(self):
        # The CGI contract of `git http-backend` (what a web server in front of it does).
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        env = {"GIT_PROJECT_ROOT": "/tmp/git", "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
               "REQUEST_METHOD": self.command, "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": str(len(body)), "REMOTE_ADDR": "127.0.0.1", "PATH": os.environ["PATH"], "HOME": "/tmp",
               "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
               "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", "")}
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out else b"\n\n"
        head, _, data = out.partition(sep)
        code, ctype, headers = 200, "application/octet-stream", []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                code = int(value.split()[0])
            elif key.lower() == "content-type":
                ctype = value.strip()
            elif key:
                headers.append((key, value.strip()))
        self.reply(code, data, ctype, headers)
    def do_POST(self):
        self.log()
        if repo and self.path.startswith("/" + repo + ".git/"):
            return self.git_backend()
        self.reply(405, b"", "text/plain")
    def do_GET(self):
        self.log()
        if repo and self.path.startswith("/" + repo + ".git/"):
            return self.git_backend()
        body = files.get(self.path.split("#")[0])
        ctype = "text/html" if self.path.startswith("/simple/") else "application/octet-stream"
        if isinstance(body, list):
            ctype, body = body
        if body is None:
            body, code = "standin " + str(self.headers.get("Host")), 200 if self.path == "/" else 404
        else:
            code = 200
        self.reply(code, body.encode("latin-1"), ctype)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain("srv.pem", "srv.key")
def remember(sock, name, _ctx): sock.standin_sni = name
ctx.sni_callback = remember
tls = S(("0.0.0.0", int(os.environ.get("STANDIN_TLS_PORT", "443"))), H)
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
    tls_port: int = 443

    @property
    def tls(self) -> str:
        return f"{self.address}:{self.tls_port}"

    @property
    def plain(self) -> str:
        return f"{self.address}:8080"

    def ca_pem(self) -> str:
        return self.container.exec_run(["cat", "/tmp/ca.pem"]).output.decode()

    def requests(self) -> list[str]:
        return [line for line in self.container.logs().decode().splitlines() if line.startswith("{")]


def tiny_npm_package(registry: str, name: str = "tinynpm", version: str = "1.0.0") -> dict[str, Any]:
    """An npm registry's files for one package: its package document (``/<name>``) and tarball."""
    import gzip
    import tarfile

    members = {
        "package/package.json": json.dumps({"name": name, "version": version, "main": "index.js"}).encode(),
        "package/index.js": b'module.exports = "hello from tinynpm";\n',
    }
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tgz = gzip.compress(raw.getvalue(), mtime=0)
    path = f"/{name}/-/{name}-{version}.tgz"
    dist = {"tarball": f"https://{registry}{path}", "shasum": hashlib.sha1(tgz).hexdigest(),  # npm's legacy field
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()}
    document = {"name": name, "dist-tags": {"latest": version},
                "versions": {version: {"name": name, "version": version, "main": "index.js", "dist": dist}}}
    return {f"/{name}": ["application/json", json.dumps(document)], path: tgz.decode("latin-1")}


@contextmanager
def standin(image: str, names: list[str], files: dict[str, Any] | None = None, git_repo: str | None = None,
            tls_port: int = 443) -> Iterator[StandIn]:
    """The stand-in on a new internal network. ``files`` (path: body, or [content type, body]; latin-1
    text) replace the default tiny index; ``git_repo`` ("owner/name") needs an ``image`` with git;
    ``tls_port`` moves the TLS server off 443 (then nothing listens there)."""
    client = docker.from_env()
    tag = secrets.token_hex(4)
    if files is None:
        filename, wheel = tiny_wheel()
        sha = hashlib.sha256(wheel).hexdigest()
        files = {
            "/simple/tinypkg/": f'<html><body><a href="/packages/{filename}#sha256={sha}">{filename}</a></body></html>',
            f"/packages/{filename}": wheel.decode("latin-1"),
        }
    environment = {"STANDIN_FILES": json.dumps(files), "HOME": "/tmp", "STANDIN_TLS_PORT": str(tls_port)}
    if git_repo:
        environment["STANDIN_GIT"] = git_repo
    net = client.networks.create(f"mcp-codeexec-egtest-{tag}", driver="bridge", internal=True,
                                 labels={"io.mcp-codeexec.test": "egress"})
    container = None
    try:
        container = client.containers.run(
            image, ["-c", SERVER, ",".join(names)], entrypoint="python3", name=f"mcp-codeexec-egtest-{tag}",
            detach=True, network=net.name, user="1000:1000", cap_drop=["ALL"], read_only=True,
            tmpfs={"/tmp": "rw,size=16m"}, environment=environment,
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
        yield StandIn(net.name, address, container, tls_port)
    finally:
        if container is not None:
            container.remove(force=True)
        net.reload()
        for attached in net.containers:  # a proxy a failed test left connected
            attached.remove(force=True) if attached.name.startswith("mcp-codeexec-egress-") else net.disconnect(attached, force=True)
        net.remove()
