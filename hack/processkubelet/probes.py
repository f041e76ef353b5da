"""Run one probe against the pod IP, as a kubelet does: HTTP status 200-399, a TCP connect, or exit code 0."""

from __future__ import annotations

import http.client
import socket
import subprocess

from processkubelet.plan import Probe


def run_probe(probe: Probe) -> bool:
    try:
        if probe.action == "http":
            cls = http.client.HTTPSConnection if probe.scheme == "HTTPS" else http.client.HTTPConnection
            conn = cls(probe.host, probe.port, timeout=probe.timeout)
            try:
                conn.request("GET", probe.path, headers={"User-Agent": "kube-probe/process-kubelet"})
                return 200 <= conn.getresponse().status < 400
            finally:
                conn.close()
        if probe.action == "tcp":
            with socket.create_connection((probe.host, probe.port), timeout=probe.timeout):
                return True
        # exec probes run on the host, not in the container's root: enough for the tests that use them
        return subprocess.run(list(probe.command), timeout=probe.timeout, capture_output=True,
                              check=False).returncode == 0
    except (OSError, http.client.HTTPException, subprocess.TimeoutExpired):
        return False
