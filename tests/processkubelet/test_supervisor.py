"""The process kubelet's supervisor with real processes in private roots: exits, termination messages, probes,
liveness restarts, CrashLoopBackOff and the deletion grace period. No cluster: the pod is a dict."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from localcluster import free_port
from processkubelet.images import ROOT, table
from processkubelet.plan import LocalRuntime, PodContext, plan_container
from processkubelet.supervisor import Backoff, ContainerRunner

pytestmark = pytest.mark.processkubelet

IP = "127.1.200.2"


@pytest.fixture(autouse=True)
def _root() -> None:
    assert os.geteuid() == 0, "the process kubelet runs containers in private mount namespaces: run the tests as root"


def runner(tmp_path: Path, container: dict[str, Any], policy: str = "Never", grace: float = 5,
           backoff: float = 10, volumes: dict[str, str] | None = None) -> ContainerRunner:
    container = {"name": "box", "image": "modelyard.local/testbox:test", **container}
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": {"containers": [container]}}
    ctx = PodContext(IP, "127.1.200.1", str(tmp_path / "pod"), volumes or {}, {})
    runtime = LocalRuntime(base_path=os.environ["PATH"], image_paths=(str(ROOT), sys.prefix, sys.base_prefix))
    plan = plan_container(pod, container, ctx, table(), runtime)
    return ContainerRunner(plan, container["image"], policy, grace, Backoff(base=backoff))


def until(r: ContainerRunner, what: str, check: Callable[[ContainerRunner], bool], timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        r.tick(time.time())
        if check(r):
            return
        time.sleep(0.05)
    log = Path(r.plan.log_file).read_text() if Path(r.plan.log_file).exists() else "(no log)"
    r.stop(0)
    raise AssertionError(f"timed out waiting for {what}; state {r.state}, last {r.last_state}\n{log}")


def terminated(r: ContainerRunner) -> bool:
    return "terminated" in r.state


def test_exit_code_and_termination_message(tmp_path: Path) -> None:
    r = runner(tmp_path, {"args": ["exit", "3", '{"ok": false}']})
    until(r, "the exit", terminated)
    term = r.state["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", '{"ok": false}')


def test_fallback_to_logs_on_error_when_no_message_was_written(tmp_path: Path) -> None:
    r = runner(tmp_path, {"args": ["exit", "4"], "terminationMessagePolicy": "FallbackToLogsOnError"})
    until(r, "the exit", terminated)
    assert r.state["terminated"]["message"] == "testbox: exiting with 4"


def test_volumes_read_only_root_and_nothing_leaks_to_the_host(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from the volume")
    ro = runner(tmp_path, {"args": ["write", "/data/out.txt", "x"], "terminationMessagePolicy": "FallbackToLogsOnError",
                           "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True}]},
                volumes={"data": str(data)})
    until(ro, "the refused write", terminated)
    assert ro.state["terminated"]["exitCode"] == 1 and "Read-only file system" in ro.state["terminated"]["message"]
    rw = runner(tmp_path, {"args": ["write", "/data/out.txt", "written inside"],
                           "securityContext": {"readOnlyRootFilesystem": True},
                           "volumeMounts": [{"name": "data", "mountPath": "/data"}]}, volumes={"data": str(data)})
    until(rw, "the write", lambda r: (data / "out.txt").exists())
    rw.stop(1)
    assert (data / "out.txt").read_text() == "written inside"
    assert not Path("/data").exists(), "a container's mount point appeared on the host"
    root_write = runner(tmp_path, {"args": ["write", "/etc/modelyard-test", "x"],
                                   "terminationMessagePolicy": "FallbackToLogsOnError",
                                   "securityContext": {"readOnlyRootFilesystem": True}})
    until(root_write, "the refused root write", terminated)
    assert "Read-only file system" in root_write.state["terminated"]["message"]


def test_readiness_follows_the_probe(tmp_path: Path) -> None:
    port, flags = free_port(), tmp_path / "flags"
    flags.mkdir()
    (flags / "ready").write_text("")
    probe = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1}
    # The flag is shared through a volume: the container's root is an overlay of the host, not the host itself.
    r = runner(tmp_path, {"args": ["serve", IP, str(port), "--ready-file", "/flags/ready"], "readinessProbe": probe,
                          "ports": [{"name": "http", "containerPort": port}],
                          "volumeMounts": [{"name": "flags", "mountPath": "/flags"}]},
               policy="Always", volumes={"flags": str(flags)})
    until(r, "ready", lambda r: r.ready)
    (flags / "ready").unlink()
    until(r, "not ready", lambda r: not r.ready)
    assert "running" in r.state and r.restart_count == 0
    r.stop(2)


def test_a_failing_liveness_probe_restarts_the_container(tmp_path: Path) -> None:
    port = free_port()
    probe = {"httpGet": {"path": "/live", "port": port + 1}, "periodSeconds": 1, "failureThreshold": 2}
    r = runner(tmp_path, {"args": ["serve", IP, str(port)], "livenessProbe": probe}, policy="Always", grace=1)
    until(r, "a restart", lambda r: r.restart_count == 1)
    last = r.last_state["terminated"]
    assert "liveness probe failed 2 times" in last["message"]
    assert last["exitCode"] == 0  # testbox exits cleanly on SIGTERM
    r.stop(0)


def test_crash_loop_back_off(tmp_path: Path) -> None:
    r = runner(tmp_path, {"args": ["exit", "1"]}, policy="Always", backoff=0.5)
    until(r, "the second run", lambda r: r.restart_count == 2 and "waiting" in r.state)
    waiting = r.state["waiting"]
    assert waiting["reason"] == "CrashLoopBackOff" and "back-off 0.5s" in waiting["message"]
    assert r.last_state["terminated"]["exitCode"] == 1
    until(r, "a back-off of 1s after the third exit", lambda r: r.restart_count == 3)
    r.stop(0)


def test_on_failure_restarts_only_failures(tmp_path: Path) -> None:
    r = runner(tmp_path, {"args": ["exit", "0"]}, policy="OnFailure")
    until(r, "the exit", terminated)
    assert r.restart_count == 0 and r.state["terminated"]["reason"] == "Completed"


@pytest.mark.parametrize(("args", "code"), [(["sleep"], 0), (["sleep", "--ignore-term"], 137)])
def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(tmp_path: Path, args: list[str],
                                                                     code: int) -> None:
    r = runner(tmp_path, {"args": args}, policy="Always")
    until(r, "the sleep", lambda r: "sleeping" in Path(r.plan.log_file).read_text())
    r.stop(1)
    assert r.state["terminated"]["exitCode"] == code, r.state
    assert r.restart_at is None


def test_what_a_container_started_goes_with_it(tmp_path: Path) -> None:
    """As a container's cgroup: a child the main process left behind (Triton's Python backend stubs) is killed
    when the container ends, by exit or by deletion. SIGTERM, as a runtime's stop signal, reaches the main process
    only: a child (the vLLM engine under Triton) is stopped by its parent, not cut while its parent drains."""
    r = runner(tmp_path, {"args": ["orphan"]}, policy="Never")
    until(r, "the child", lambda r: "testbox: child " in Path(r.plan.log_file).read_text())
    child = int(Path(r.plan.log_file).read_text().split("testbox: child ")[1].split()[0])
    os.kill(child, 0)  # alive
    r.stop(1)
    assert r.state["terminated"]["exitCode"] == 0, r.state

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie until its parent (init, here) reaps it: dead all the same.
        return Path(f"/proc/{child}/stat").read_text().split(") ")[1].startswith("Z")

    deadline = time.time() + 10
    while not gone() and time.time() < deadline:
        time.sleep(0.05)
    assert gone(), f"the container's child {child} outlived it"
    assert "child got SIGTERM" not in Path(r.plan.log_file).read_text()


def test_a_mount_under_a_symlink_lands_inside_the_container_root(tmp_path: Path) -> None:
    # /var/run -> /run on Debian: resolved on the host, the bind would go to the host's /run, not the container's.
    data = tmp_path / "data"
    data.mkdir()
    r = runner(tmp_path, {"args": ["write", "/var/run/modelyard-test-data/out.txt", "through the symlink"],
                          "volumeMounts": [{"name": "data", "mountPath": "/var/run/modelyard-test-data"}]},
               volumes={"data": str(data)})
    until(r, "the write", lambda r: (data / "out.txt").exists())
    r.stop(1)
    assert (data / "out.txt").read_text() == "through the symlink"
    assert not Path("/run/modelyard-test-data").exists(), "the mount point was made on the host"
