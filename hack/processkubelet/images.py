"""The one table that says which container image runs as which local program.

A real kubelet pulls an image and runs its entrypoint; the process kubelet looks the image's repository (the
reference without tag or digest) up here. An image that is not in the table fails its pod with ErrImagePull and
a message that names this file: never a silent success.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LocalImage:
    """What one image runs locally."""

    repository: str
    kind: str
    """triton | triton-vllm | converter | testbox: selects what else the kubelet prepares (Triton's backends and
    addresses; for triton-vllm also the vLLM engine's environment)."""
    entrypoint: tuple[str, ...] = ()
    """The image's ENTRYPOINT as a local argv; a container `command` replaces it, as in a real runtime."""
    commands: dict[str, str] = field(default_factory=dict)
    """Programs the image has on its PATH, by name -> the local program that stands for it."""


def _triton_binary() -> str:
    """tritonserver from the nvidia-pytriton wheel (CPU build, python backend only)."""
    try:
        import pytriton
    except ImportError:  # the kubelet reports the pod as unrunnable with this path in the message
        return "/nonexistent/nvidia-pytriton-is-not-installed/tritonserver"
    return str(Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver")


def table() -> dict[str, LocalImage]:
    python = sys.executable
    images = [
        LocalImage("nvcr.io/nvidia/tritonserver", "triton", commands={"tritonserver": _triton_binary()}),
        # Triton's vLLM image (tag <release>-vllm-python-py3): the same server, its vllm backend a local stand-in that
        # runs vLLM's CPU build (hack/vllmlocal/model.py, docs/local-cluster.md).
        LocalImage(f"nvcr.io/nvidia/tritonserver{VLLM_VARIANT}", "triton-vllm",
                   commands={"tritonserver": _triton_binary()}),
        LocalImage("ghcr.io/modelyard/converter", "converter",
                   entrypoint=(python, str(ROOT / "runtime" / "converter" / "entrypoint.py")),
                   commands={"python": python}),
        # The process kubelet's own tests: a small program that serves probes, exits, writes its termination log.
        LocalImage("modelyard.local/testbox", "testbox",
                   entrypoint=(python, str(ROOT / "hack" / "processkubelet" / "testbox.py")),
                   commands={"python": python}),
    ]
    return {i.repository: i for i in images}


TRITON_KINDS = frozenset({"triton", "triton-vllm"})
VLLM_VARIANT = "#vllm"
"""The table's key suffix for Triton's vLLM images: the same repository as the plain server, told apart by tag."""


def local_key(image: str) -> str:
    """The table key of an image: its repository, with VLLM_VARIANT for a -vllm-python-py3 tag."""
    name = image.split("@", 1)[0]
    repository = repository_of(image)
    tag = name[len(repository) + 1:] if len(name) > len(repository) else ""
    return repository + VLLM_VARIANT if tag.endswith("-vllm-python-py3") else repository


def repository_of(image: str) -> str:
    """registry/path:tag@digest -> registry/path."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
