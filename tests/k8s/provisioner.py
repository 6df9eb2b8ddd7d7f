"""A StorageClass with a real size limit on a cluster that has no provisioner (the local 1.20 one).

``loop_provisioner`` creates a StorageClass with ``provisioner: kubernetes.io/no-provisioner`` and
``volumeBindingMode: WaitForFirstConsumer`` and runs a small static provisioner in a thread: for each
Pending claim of that class it makes a sparse image of the claimed size, formats it ext4 (the same
loop-mounted workspace the Docker backend uses), mounts it under a private root and creates a
``hostPath`` PersistentVolume of exactly that capacity, pre-bound to the claim (``claimRef`` with
its uid, so the PV controller binds the two and nothing else can take it). hostPath itself enforces
no capacity; the filesystem under it does, so a write past the claim's size fails with ENOSPC inside
the pod, as on a block-backed class. When a claim is deleted its PV is Released (reclaim policy
Retain: the controller-manager never removes the files itself); the provisioner then deletes the PV,
unmounts the filesystem and removes the image, like a CSI driver's DeleteVolume. On exit it removes
the StorageClass and whatever PVs and mounts are left. Needs root (mount); it addresses nothing but
the API server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by"
TESTS = "mcp-codeexec-tests"
"""The managed-by value of the StorageClass and PVs made here (.ci/run's leftover check counts them)."""
L_CLASS = "mcp-codeexec-tests/storage-class"
POLL_SECONDS = 0.2


def _failures() -> tuple[type[BaseException], ...]:
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError, subprocess.SubprocessError)



def parse_quantity(text: str) -> int:
    """Bytes of a Kubernetes quantity such as ``5Gi``, ``64Mi``, ``1G`` or ``1048576``."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@dataclass
class LoopProvisioner:
    core: Any
    storage: Any
    root: Path
    class_name: str
    made: dict[str, tuple[Path, str]] = field(default_factory=dict)
    """PV name -> its directory (image and mount point) and its claim (``namespace/name``)."""
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    # --- one volume -------------------------------------------------------------------------

    def _make(self, pvc: Any) -> None:
        size = parse_quantity(pvc.spec.resources.requests["storage"])
        name = f"{self.class_name}-{pvc.metadata.uid[:8]}"
        vol = self.root / name
        if vol.exists():  # a make that failed halfway: start over
            self._unmount(name)
        vol.mkdir()
        self.made[name] = (vol, f"{pvc.metadata.namespace}/{pvc.metadata.name}")
        image, mnt = vol / "image", vol / "mnt"
        mnt.mkdir()
        # A few percent over the claim for ext4's own metadata, so the usable space is at least the
        # claimed size (as the Docker backend pads its loop workspaces); sparse, so it costs nothing.
        with open(image, "wb") as fh:
            fh.truncate(size + size * 3 // 100 + 4 * 2**20)
        journal = ["-J", "size=16"] if size >= 2**30 else []
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^resize_inode", *journal,
              "-E", "root_owner=1000:1000,lazy_itable_init=1,lazy_journal_init=1", str(image)])
        _run(["mount", "-o", "loop,nosuid,nodev,discard,noinit_itable", str(image), str(mnt)])
        with contextlib.suppress(OSError):
            (mnt / "lost+found").rmdir()
        self.core.create_persistent_volume({
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {MANAGED_BY: TESTS, L_CLASS: self.class_name}},
            "spec": {
                "capacity": {"storage": pvc.spec.resources.requests["storage"]},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": self.class_name,
                "hostPath": {"path": str(mnt), "type": "Directory"},
                "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": pvc.metadata.namespace,
                             "name": pvc.metadata.name, "uid": pvc.metadata.uid},
            },
        })
        log.info("provisioned %s (%s) for claim %s/%s", name, pvc.spec.resources.requests["storage"],
                 pvc.metadata.namespace, pvc.metadata.name)

    def _unmount(self, name: str) -> None:
        vol = self.made.pop(name, (self.root / name, ""))[0]
        mnt = vol / "mnt"
        if os.path.ismount(mnt):
            _run(["umount", "-l", str(mnt)])  # -o loop's device is detached with its last user
        shutil.rmtree(vol, ignore_errors=True)

    def _delete_pv(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        self._unmount(name)  # first: once the PV object is gone, so is its filesystem
        try:
            self.core.delete_persistent_volume(name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- the loop ---------------------------------------------------------------------------

    def pvs(self) -> list[Any]:
        return self.core.list_persistent_volume(label_selector=f"{MANAGED_BY}={TESTS},{L_CLASS}={self.class_name}").items

    def sync(self) -> None:
        bound_to = {(pv.spec.claim_ref.namespace, pv.spec.claim_ref.uid) for pv in self.pvs() if pv.spec.claim_ref}
        for pvc in self.core.list_persistent_volume_claim_for_all_namespaces().items:
            if (pvc.spec.storage_class_name == self.class_name and pvc.status.phase == "Pending" and not pvc.spec.volume_name
                    and not pvc.metadata.deletion_timestamp and (pvc.metadata.namespace, pvc.metadata.uid) not in bound_to):
                self._make(pvc)
        for pv in self.pvs():
            if pv.status.phase in ("Released", "Failed") and not pv.metadata.deletion_timestamp:
                self._delete_pv(pv.metadata.name)

    def _loop(self) -> None:
        from urllib3.exceptions import HTTPError

        while not self._stop.wait(POLL_SECONDS):
            try:
                self.sync()
            except HTTPError as exc:  # the API server is away (tests restart it): the next round retries
                log.info("test provisioner: the API is unreachable: %r", exc)
            except _failures() as exc:  # keep serving; the tests assert ``errors`` is empty
                self.errors.append(repr(exc))
                log.warning("test provisioner: %r", exc)

    def volumes(self) -> dict[str, str]:
        """PV name -> the claim it is bound to (``namespace/name``), for the tests' leftover checks."""
        return {pv.metadata.name: f"{pv.spec.claim_ref.namespace}/{pv.spec.claim_ref.name}" if pv.spec.claim_ref else ""
                for pv in self.pvs()}

    def wait_released(self, timeout: float = 60.0) -> dict[str, str]:
        """Until no PV of the class is left (their claims gone and the PVs deleted): what is left."""
        deadline = time.monotonic() + timeout
        while (left := self.volumes()) and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
        return left


@contextlib.contextmanager
def loop_provisioner(api_client: Any, *, binding_mode: str = "WaitForFirstConsumer") -> Iterator[LoopProvisioner]:
    from kubernetes import client

    core, storage = client.CoreV1Api(api_client), client.StorageV1Api(api_client)
    name = "mcp-codeexec-test-" + secrets.token_hex(3)
    root = Path(tempfile.mkdtemp(prefix="mcp-codeexec-k8s-pv-", dir="/var/tmp"))
    storage.create_storage_class({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "labels": {MANAGED_BY: TESTS}},
        "provisioner": "kubernetes.io/no-provisioner",
        "volumeBindingMode": binding_mode,
        "reclaimPolicy": "Retain",
    })
    prov = LoopProvisioner(core, storage, root, name)
    thread = threading.Thread(target=prov._loop, name="test-provisioner", daemon=True)
    thread.start()
    try:
        yield prov
    finally:
        left = prov.wait_released(timeout=30.0)
        prov._stop.set()
        thread.join(10)
        for pv in list(left) + list(prov.made):
            with contextlib.suppress(*_failures()):  # best effort: the CI leftover check reports what stays
                prov._delete_pv(pv)
        with contextlib.suppress(*_failures()):
            storage.delete_storage_class(name)
        for vol in root.iterdir():
            if os.path.ismount(vol / "mnt"):
                subprocess.run(["umount", "-l", str(vol / "mnt")], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        if left:
            log.warning("test provisioner: PVs still bound at the end (their claims were leaked): %s", left)
