"""Fixtures for the integration and e2e tiers: one real local control plane per test session.

Nothing here skips: when a control-plane part is missing, the fixture fails with what is missing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from localcluster import LocalCluster
from modelyard.kube.client import Kube, load_api_client


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cl = LocalCluster(tmp_path_factory.mktemp("cluster")).start()
    try:
        cl.install_modelyard()
        yield cl
    finally:
        cl.stop()


@pytest.fixture(scope="session")
def admin(cluster: LocalCluster) -> Kube:
    """A client with cluster-admin rights, for arranging and inspecting."""
    return Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-tests")


@pytest.fixture(scope="session")
def operator_kube(cluster: LocalCluster) -> Kube:
    """The operator's client: user modelyard-operator with the chart's RBAC and nothing else."""
    return Kube(load_api_client(str(cluster.operator_kubeconfig)))


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    yield name
    # A test may have deleted it already (test_a_terminating_namespace_...): gone is what teardown wants.
    cluster.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The RBAC audit (tests/rbac) judges the whole session's audit log: it runs after everything else."""
    items.sort(key=lambda item: "tests/rbac/" in str(item.path).replace("\\", "/"))
