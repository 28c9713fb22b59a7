"""Real services for tests: a private redis-server per test session (or per test when a test
needs to kill and restart it) and the local Docker engine with a locally built test image.

When CI=true a missing service fails the test; elsewhere it skips with the reason."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shared.redis_server import RedisServer

TEST_LABEL = "hemostat.test"  # every container a test creates carries it, and is removed
TEST_IMAGE = "hemostat-test/busybox:latest"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Fail under CI (a missing service is a broken CI, never a skip); skip elsewhere."""
    if in_ci():
        pytest.fail(f"required service unavailable under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


def redis_server(workdir: Path) -> RedisServer:
    """A started private redis-server, or a skip/fail when the binary is missing."""
    if shutil.which("redis-server") is None:
        unavailable("redis-server binary not found (make test installs it)")
    return RedisServer(workdir).start()


# ---------------------------------------------------------------- Docker


def docker_client() -> Any:
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except DockerException as exc:
        unavailable(f"Docker engine not reachable: {exc} (make test starts dockerd)")
    return client


def busybox_binary() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    unavailable("busybox-static not installed (make test installs it)")
    raise AssertionError("unreachable")


def ensure_test_image(client: Any, tag: str = TEST_IMAGE) -> str:
    """Build the tiny test image (static busybox, every applet linked) when missing.

    No registry can be reached from these machines, so the image is `docker import`ed."""
    from docker.errors import ImageNotFound

    try:
        client.images.get(tag)
        return tag
    except ImageNotFound:
        pass
    busybox = busybox_binary()
    applets = subprocess.run(
        [str(busybox), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for folder in ("bin", "tmp", "proc", "sys", "dev", "etc"):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        data = busybox.read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            if applet == "busybox":
                continue
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    repository, _, version = tag.partition(":")
    client.api.import_image_from_data(
        buf.getvalue(),
        repository=repository,
        tag=version or "latest",
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    return tag


def remove_test_containers(client: Any, run_id: str | None = None) -> None:
    label = f"{TEST_LABEL}={run_id}" if run_id else TEST_LABEL
    for container in client.containers.list(all=True, filters={"label": label}):
        with contextlib.suppress(Exception):  # best effort: it may already be gone
            container.remove(force=True, v=True)
