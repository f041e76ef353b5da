#!/usr/bin/env bash
# Installs aiperf (NVIDIA's LLM load generator, from PyPI) into a venv of its own, ~/.cache/modelyard/aiperf-<v>/,
# unless it is there: bench/llm.py drives Triton's generate_stream with it, beside its own client. A venv of its
# own because its pins (transformers, pydantic, numpy) are not the operator's. Prints the venv on stdout.
# About 1.2 GB, 1-2 minutes from PyPI. 0.13.0 is the version tried here (docs/llm.md, "The benchmark").
. "$(dirname "$0")/../lib/build.sh"

version="${MODELYARD_AIPERF_VERSION:-0.13.0}"
out="$MODELYARD_CACHE/aiperf-$version"
cached "$out" bin/aiperf .installed
BUILD_NAME=aiperf
echo "aiperf: installing $version from PyPI into $out (first run only)" >&2
BUILD_START=$(date +%s)
rm -rf "$out"
python3 -m venv "$out"
"$out/bin/pip" install --quiet --upgrade pip >&2
"$out/bin/pip" install --quiet "aiperf==$version" >&2
touch "$out/.installed"
build_done "$out"
