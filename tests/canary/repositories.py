"""Triton model repositories of the echo model, each revision behaving as asked (tests/canary/echo_model.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

MODEL = "echo"
HERE = Path(__file__).parent


def write_repository(root: Path, identity: str, *, fail_percent: float = 0, delay_ms: float = 0,
                     crash_after: int = 0, instances: int = 1) -> Path:
    """root/<identity>/echo/{config.pbtxt,1/model.py}: a repository whose model answers `identity`."""
    repo = root / identity
    version = repo / MODEL / "1"
    version.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HERE / "echo_model.py", version / "model.py")
    params = {"identity": identity, "fail_percent": fail_percent, "delay_ms": delay_ms, "crash_after": crash_after}
    parameters = "\n".join(f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}' for k, v in params.items())
    (repo / MODEL / "config.pbtxt").write_text(f'''name: "{MODEL}"
backend: "python"
max_batch_size: 8
input [ {{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }}, {{ name: "WHO" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: {instances} }} ]
{parameters}
''')
    return repo
