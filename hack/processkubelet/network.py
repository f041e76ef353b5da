"""Pod networking for the process kubelet, as a CNI plugin would do it: a network namespace per pod.

Why not loopback pod IPs: kube-apiserver refuses loopback addresses in EndpointSlices ("may not be in the
loopback range"), so a Service could never point at them. Instead each pod gets its own network namespace with a
veth pair to the host and an address in 198.18.<node>.0/24, out of 198.18.0.0/15: the RFC 2544 benchmarking
range, neither private nor public, that exists here only inside these namespaces. The host side of every veth
is 198.18.<node>.1 (the node's InternalIP) with a /32 route to the pod; a blackhole route for the whole /15
makes sure that traffic to an address that is not (or no longer) a pod dies on this machine and is never sent
to a gateway. The pods' namespaces have no default route: a pod reaches the host (at its node IP) and nothing else.

Node indexes are claimed machine-wide with a lock file, so a demo and a test run can share a machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
from pathlib import Path

RANGE = "198.18.0.0/15"
LOCKS = Path("/run/modelyard-process-kubelet")
MAX_NODES = 100


class NetworkError(RuntimeError):
    pass


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def node_ip(index: int) -> str:
    return f"198.18.{index}.1"


def pod_ips(index: int) -> list[str]:
    return [f"198.18.{index}.{n}" for n in range(2, 255)]


def claim_index() -> tuple[int, int]:
    """The first node index no running kubelet on this machine holds, and the lock's file descriptor (keep it
    open for the kubelet's lifetime: the lock goes with the process, even on a crash)."""
    LOCKS.mkdir(parents=True, exist_ok=True)
    for index in range(MAX_NODES):
        fd = os.open(LOCKS / f"node-{index}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return index, fd
    raise NetworkError(f"all {MAX_NODES} process-node indexes on this machine are taken")


def _netns(index: int, n: int) -> str:
    return f"mdy-{index}-{n}"


def _veth(index: int, n: int) -> str:
    return f"mdyv{index}-{n}"  # at most 15 characters: mdyv99-254


class PodNetwork:
    """Creates and removes the network namespaces of one node's pods."""

    def __init__(self, index: int) -> None:
        self.index = index
        ip("route", "replace", "blackhole", RANGE)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what a kubelet of this index left behind when it was killed: the processes still running in its
        pods' namespaces, the namespaces, and with them the veths."""
        prefix = f"mdy-{self.index}-"
        for line in ip("netns", "list", check=False).stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            if name.startswith(prefix):
                for pid in ip("netns", "pids", name, check=False).stdout.split():
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                ip("netns", "del", name, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
            if name.startswith(f"mdyv{self.index}-"):
                ip("link", "del", name, check=False)

    def setup(self, pod_ip: str) -> str:
        """A namespace holding `pod_ip` on eth0, reachable from the host; returns the namespace's name."""
        n = int(pod_ip.rsplit(".", 1)[1])
        ns, veth, host = _netns(self.index, n), _veth(self.index, n), node_ip(self.index)
        ip("netns", "del", ns, check=False)
        ip("link", "del", veth, check=False)
        ip("netns", "add", ns)
        ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{host}/32", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "route", "add", f"{host}/32", "dev", "eth0")
        ip("route", "replace", f"{pod_ip}/32", "dev", veth, "src", host)
        return ns

    def teardown(self, pod_ip: str) -> None:
        n = int(pod_ip.rsplit(".", 1)[1])
        ip("netns", "del", _netns(self.index, n), check=False)  # its eth0 goes, and the host's veth with it
        ip("link", "del", _veth(self.index, n), check=False)
