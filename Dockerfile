# mcp-codeexec itself, for HTTP deployments: the MCP server at :8000/mcp (bearer tokens required),
# starting sandbox containers on the host's Docker engine through its socket.
#
#   docker build -t mcp-codeexec .
#   docker run -d --name mcp-codeexec -p 127.0.0.1:8000:8000 \
#       -v /var/run/docker.sock:/var/run/docker.sock -v mcp-codeexec-data:/data \
#       -e MCP_CODEEXEC_AUTH_TOKENS=alice:$(openssl rand -hex 24) mcp-codeexec
#
# Without MCP_CODEEXEC_AUTH_TOKENS a token is generated, printed to the log once (`docker logs`)
# and kept in /data/http_token. The sandbox image must exist on the host engine
# (`mcp-codeexec image build`, or `docker run ... mcp-codeexec image build`).
#
# Workspaces are plain Docker volumes here (MCP_CODEEXEC_QUOTA=none): the loop-mounted ext4
# quota needs mounts on the engine's host, which a container cannot make. Run the server on the
# host itself for hard per-workspace disk limits. Access to the Docker socket is root on the
# host: expose this server only with tokens, and only where you would expose the socket's owner.
#
# Build arguments:
#   BASE  the official Python image by default; any Debian bookworm image works (python3 is
#         installed from apt when missing), e.g. the base `mcp-codeexec image build --base debian` makes.
# An extra CA bundle for TLS-intercepting proxies is taken from ./ca-bundle.crt when present.
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

COPY pyproject.toml ca-bundle.cr[t] /tmp/build/
RUN set -eux; \
    export DEBIAN_FRONTEND=noninteractive; \
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null || [ ! -e /etc/ssl/certs/ca-certificates.crt ]; then \
        apt-get update; \
        apt-get install -y --no-install-recommends python3 python3-venv ca-certificates; \
        rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; \
    fi; \
    if [ -s /tmp/build/ca-bundle.crt ]; then \
        cat /tmp/build/ca-bundle.crt >> /etc/ssl/certs/ca-certificates.crt; \
    fi; \
    python3 -m venv /opt/mcp-codeexec; \
    rm -rf /tmp/build
ENV PATH=/opt/mcp-codeexec/bin:$PATH \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY . /src
# [postgres]: psycopg, for replicas sharing one database (MCP_CODEEXEC_DATABASE_URL); [kubernetes]: the
# client for the kubernetes backend (deploy/kubernetes runs this image as the server's pods).
RUN pip install "/src[postgres,kubernetes]" && rm -rf /src

ENV MCP_CODEEXEC_TRANSPORT=http \
    MCP_CODEEXEC_HOST=0.0.0.0 \
    MCP_CODEEXEC_PORT=8000 \
    MCP_CODEEXEC_DATA_DIR=/data \
    MCP_CODEEXEC_QUOTA=none
VOLUME /data
EXPOSE 8000
ENTRYPOINT ["mcp-codeexec"]
CMD ["serve", "--transport", "http", "--host", "0.0.0.0"]
