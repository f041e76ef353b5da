"""One container of one pod as a local process: start it in its own root, watch it, probe it, restart it.

`tick()` is called by the pod's worker a few times a second; it never blocks longer than one probe's timeout.
The container's state is kept in the Kubernetes shape (waiting / running / terminated, lastState,
restartCount, ready, started), so the pod status is a plain read of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from processkubelet.plan import Probe, ProcessPlan
from processkubelet.probes import run_probe

ENTER = Path(__file__).with_name("enter.py")
TERMINATION_LIMIT = 4096
FALLBACK_LOG_LINES, FALLBACK_LOG_BYTES = 80, 2048
EXIT_CANNOT_START = 128
"""enter.py's exit code when the container's root or program could not be set up (containerd's StartError)."""


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Backoff:
    """CrashLoopBackOff: the first restart is immediate, then base, 2*base, ... up to cap (kubelet: 10 s, 300 s)."""

    base: float = 10.0
    cap: float = 300.0

    def delay(self, restarts: int) -> float:
        return 0.0 if restarts == 0 else min(self.cap, self.base * 2 ** (restarts - 1))


@dataclass
class _ProbeState:
    probe: Probe
    next_at: float
    successes: int = 0
    failures: int = 0


@dataclass
class ContainerRunner:
    plan: ProcessPlan
    image: str
    restart_policy: str
    grace_seconds: float
    backoff: Backoff = field(default_factory=Backoff)
    proc: subprocess.Popen[bytes] | None = None
    state: dict[str, Any] = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    restart_at: float | None = 0.0
    kill_deadline: float | None = None
    kill_reason: str = ""
    _started_at: float = 0.0
    _log_offset: int = 0
    _probes: dict[str, _ProbeState] = field(default_factory=dict)

    # --- lifecycle ------------------------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.proc is not None:
            if self.proc.poll() is not None:
                self._exited(now)
            elif self.kill_deadline is not None:
                if now >= self.kill_deadline:
                    self._signal(signal.SIGKILL)
            else:
                self._run_probes(now)
        if self.proc is None and self.restart_at is not None and now >= self.restart_at:
            self._start(now)

    def _start(self, now: float) -> None:
        plan = self.plan
        Path(plan.termination_file).parent.mkdir(parents=True, exist_ok=True)
        Path(plan.termination_file).write_bytes(b"")  # a fresh message for each run, as a kubelet makes
        Path(plan.log_file).parent.mkdir(parents=True, exist_ok=True)
        plan_file = Path(plan.rootfs).parent / f"{plan.container}.plan.json"
        Path(plan.rootfs).mkdir(parents=True, exist_ok=True)
        plan_file.write_text(json.dumps(dataclasses.asdict(plan), indent=1))
        with open(plan.log_file, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"==> process kubelet: run {self.restart_count} of {plan.container} at {rfc3339(now)}: "
                      f"{' '.join(plan.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([sys.executable, str(ENTER), str(plan_file)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd="/")
        self._started_at = now
        self.restart_at = None
        self.kill_deadline = None
        self.ready = False
        self.started = not any(p.kind == "startup" for p in plan.probes)
        self.state = {"running": {"startedAt": rfc3339(now)}}
        self._probes = {p.kind: _ProbeState(p, now + p.initial_delay) for p in plan.probes}

    def _exited(self, now: float) -> None:
        assert self.proc is not None
        code = self.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as container runtimes report
        # The container is its process group: what its main process left running goes with it, as a container's
        # cgroup does (Triton's Python backend stubs outlived a SIGTERMed server otherwise). The group's id stays
        # reserved while any member lives, so this reaches only the container's processes.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        message = self._termination_message(code)
        reason = "Completed" if code == 0 else "Error"
        if code == EXIT_CANNOT_START and "process kubelet: cannot start" in self._log_since_start():
            reason = "StartError"
        if self.kill_reason:
            message = message or self.kill_reason
        terminated = {"exitCode": code, "reason": reason, "startedAt": rfc3339(self._started_at),
                      "finishedAt": rfc3339(now)}
        if message:
            terminated["message"] = message
        self.ready = False
        self.started = False
        self.kill_reason = ""
        self.kill_deadline = None
        restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
        if not restart:
            self.state = {"terminated": terminated}
            self.restart_at = None
            return
        delay = self.backoff.delay(self.restart_count)
        self.last_state = {"terminated": terminated}
        self.restart_count += 1
        self.restart_at = now + delay
        if delay > 0:
            self.state = {"waiting": {"reason": "CrashLoopBackOff", "message": (
                f"back-off {delay:g}s restarting failed container={self.plan.container}")}}
        else:
            self.state = {"terminated": terminated}

    def _log_since_start(self) -> str:
        try:
            with open(self.plan.log_file, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def _termination_message(self, code: int) -> str:
        try:
            text = Path(self.plan.termination_file).read_bytes()[:TERMINATION_LIMIT].decode(errors="replace")
        except OSError:
            text = ""
        if not text and code != 0 and self.plan.termination_policy == "FallbackToLogsOnError":
            lines = self._log_since_start().splitlines()[1:]  # not the kubelet's own header line
            text = "\n".join(lines[-FALLBACK_LOG_LINES:])[-FALLBACK_LOG_BYTES:]
        return text

    # --- probes ---------------------------------------------------------------------------------------------------
    def _run_probes(self, now: float) -> None:
        for kind in ("startup", "liveness", "readiness"):
            st = self._probes.get(kind)
            if st is None or now < st.next_at or (kind != "startup" and not self.started):
                continue
            if kind == "startup" and self.started:
                continue
            st.next_at = now + st.probe.period
            if run_probe(st.probe):
                st.successes, st.failures = st.successes + 1, 0
            else:
                st.successes, st.failures = 0, st.failures + 1
            if kind == "startup" and st.successes >= 1:
                self.started = True
                for other in self._probes.values():  # liveness and readiness begin now
                    other.next_at = min(other.next_at, now)
            elif kind == "readiness":
                if st.successes >= st.probe.success_threshold:
                    self.ready = True
                elif st.failures >= st.probe.failure_threshold:
                    self.ready = False
            if kind in ("startup", "liveness") and st.failures >= st.probe.failure_threshold:
                self.kill(self.grace_seconds, f"{kind} probe failed {st.failures} times "
                          f"({st.probe.action} {st.probe.host}:{st.probe.port}{st.probe.path})")
                return
        if "readiness" not in self._probes:
            self.ready = self.started

    # --- stopping -------------------------------------------------------------------------------------------------
    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self, grace: float, reason: str = "") -> None:
        """SIGTERM now, SIGKILL once `grace` seconds have passed (see tick).

        SIGTERM goes to the container's main process only, as a container runtime sends the stop signal to PID 1:
        the main process stops its children in its own order (Triton finishes the streams in flight, then
        unloads the vLLM backend, which stops the engine's processes). SIGKILL at the deadline takes the group."""
        if self.proc is None or self.kill_deadline is not None:
            return
        self.kill_reason = reason
        self.ready = False
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        self.kill_deadline = time.time() + grace

    def stop(self, grace: float) -> None:
        """Stop for good (pod deletion): no restart after this."""
        self.restart_at = None
        self.restart_policy = "Never"
        self.kill(grace)
        deadline = time.time() + grace
        while self.proc is not None and self.proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        self._signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
            self._exited(time.time())
