"""The test environment's Docker engine: reachable, the local test image builds and runs, and
containers made by tests are labelled and removed."""

from __future__ import annotations

import pytest

from tests.support.services import TEST_LABEL

pytestmark = pytest.mark.docker


def test_engine_runs_the_locally_built_image(docker, test_image, run_label):
    container = docker.containers.run(
        test_image, ["sh", "-c", "echo hello-from-busybox"], labels=run_label, detach=True
    )
    assert container.wait(timeout=30)["StatusCode"] == 0
    assert b"hello-from-busybox" in container.logs()
    labelled = docker.containers.list(all=True, filters={"label": f"{TEST_LABEL}"})
    assert container.id in {c.id for c in labelled}
