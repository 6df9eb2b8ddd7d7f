"""Sandbox engines: how one engine creates, finds, stops and removes a sandbox and opens its byte
stream (``base.Engine``). The lifecycle that uses them is ``backends.sandbox``.

``engine_config`` reads the settings into a ``type``-discriminated config (docker | kubernetes) and
``build_engine`` makes its engine; an engine's module (and its client library) is imported only
when that engine is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, TypeAdapter

from ..config import Settings

if TYPE_CHECKING:
    from .base import Engine


class DockerEngineConfig(BaseModel):
    type: Literal["docker"] = "docker"

    def build(self, settings: Settings) -> Engine:
        from .docker import DockerEngine, connect

        return DockerEngine(settings, connect())


class KubernetesEngineConfig(BaseModel):
    type: Literal["kubernetes"] = "kubernetes"
    kubeconfig: str | None = None
    context: str | None = None
    namespace: str = "default"
    runtime_class: str | None = None
    storage_class: str | None = None
    image_pull_policy: str = "IfNotPresent"
    network_check: Literal["refuse", "warn", "off"] = "refuse"

    def build(self, settings: Settings) -> Engine:
        from .kubernetes import KubernetesEngine

        return KubernetesEngine.from_settings(settings, self)


EngineConfig = Annotated[DockerEngineConfig | KubernetesEngineConfig, Field(discriminator="type")]


def engine_config(settings: Settings) -> DockerEngineConfig | KubernetesEngineConfig:
    if settings.backend == "kubernetes":
        data = {
            "type": "kubernetes", "kubeconfig": settings.kubeconfig, "context": settings.k8s_context,
            "namespace": settings.k8s_namespace, "runtime_class": settings.k8s_runtime_class,
            "storage_class": settings.k8s_storage_class, "image_pull_policy": settings.k8s_image_pull_policy,
            "network_check": settings.k8s_network_check,
        }
    else:
        data = {"type": "docker"}
    return TypeAdapter(EngineConfig).validate_python(data)


def build_engine(settings: Settings) -> Engine:
    """Connect to the engine the settings name (blocking: call it off the event loop)."""
    return engine_config(settings).build(settings)
