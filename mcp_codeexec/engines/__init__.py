"""Sandbox engines: how one engine creates, finds and removes a sandbox and opens its byte stream.

Prototype layer for issue 15 (the Kubernetes backend). Nothing imports it yet; the Docker backend
still lives in ``backends/docker.py`` and ``sandboxes.py``.
"""
