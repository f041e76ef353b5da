"""Benchmark of LLM serving through the whole local path against the engine in-process, in one run (ratios).

The path: an HTTP client -> Triton's generate_stream (the real tritonserver of the nvidia-pytriton wheel) -> the
vllm backend's local stand-in -> vLLM's CPU engine, on a repository the converter made for the tiny Llama. On the
local cluster a Service's traffic goes to the pod IP its EndpointSlice names, with no proxy between: the same hops
as here, without the pod's network namespace. The floor: the same engine called in-process (AsyncLLM), streamed,
at the same concurrencies, in the same run.

The client is a bounded one of this repository (threads, one streamed request each at a time, exactly
--max-tokens tokens a request with ignore_eos). aiperf 0.13.0 installs from PyPI here and has template and raw
endpoint types and a local tokenizer path, so it could drive generate_stream; that was not tried yet (docs/llm.md).

Per concurrency 1, 8, 32: time to first token (median), inter-token latency (median of (last - first) /
(tokens - 1) per request) and output tokens/s, for both, and path / floor.
Usage: .venv/bin/python bench/llm.py [--levels 1,8,32] [--max-tokens 32] [--requests 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "hack")]
warnings.filterwarnings("ignore")


def floor(checkpoint: Path, levels: list[int], max_tokens: int, requests: int) -> dict[str, Any]:
    import os
    import subprocess

    from llm_support import PROMPTS
    from tritonlocal import vllm_venv

    proc = subprocess.run([str(vllm_venv() / "bin" / "python"), str(ROOT / "hack" / "vllmlocal" / "inprocess.py"),
                           str(checkpoint), "--bench", ",".join(map(str, levels)), "--max-tokens", str(max_tokens),
                           "--requests", str(requests)], input=json.dumps(PROMPTS), capture_output=True, text=True,
                          timeout=1800, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"the in-process engine failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


def through_triton(url: str, levels: list[int], max_tokens: int, requests: int) -> dict[str, Any]:
    from llm_support import PROMPTS, generate

    out: dict[str, Any] = {}
    for c in levels:
        timings: list[tuple[float, float]] = []
        lock = threading.Lock()
        todo = list(range(c * requests))

        def worker(lock: threading.Lock = lock, todo: list[int] = todo,
                   timings: list[tuple[float, float]] = timings) -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                start = time.monotonic()
                _, times = generate(url, "tiny", PROMPTS[i % len(PROMPTS)], stream=True, max_tokens=max_tokens,
                                    ignore_eos=True)
                with lock:
                    timings.append((times[0] - start, (times[-1] - times[0]) / max(max_tokens - 1, 1)))

        begin = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(c)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - begin
        out[str(c)] = {"ttft": [t for t, _ in timings], "itl": [g for _, g in timings],
                       "tokensPerSecond": c * requests * max_tokens / wall}
    return out


def main() -> int:
    from modelyard.api.v1alpha1 import ModelSource, Serving
    from modelyard.api.v1alpha1.conversion import Conversion
    from modelyard.convert.pipeline import Request, convert
    from samplemodels import tiny_llama
    from tritonlocal import Triton

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2, help="requests per unit of concurrency")
    args = parser.parse_args()
    levels = [int(c) for c in args.levels.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        checkpoint = Path(tiny_llama(str(d / "tiny-llama")))
        serving = Serving.model_validate({"runtime": "vllm", "gpus": 0, "vllm": {"maxModelLength": 512,
                                                                                "maxConcurrentSequences": 32}})
        source = ModelSource.model_validate({"uri": str(checkpoint), "format": "huggingface"})
        manifest = convert(Request("tiny", source, Conversion(), serving), d / "store")
        print(f"tiny Llama (hidden 128, 2 layers), {args.max_tokens} output tokens a request, "
              f"{args.requests} x concurrency requests a level; measuring the floor (in-process engine)...",
              flush=True)
        base = floor(checkpoint, levels, args.max_tokens, args.requests)
        triton = Triton(Path(manifest["repository"]), d, vllm=True).start(timeout=600)
        try:
            print("... and the path (HTTP -> Triton -> vllm backend stand-in -> engine)", flush=True)
            path = through_triton(f"http://127.0.0.1:{triton.http_port}", levels, args.max_tokens, args.requests)
        finally:
            triton.stop()

    print(f"\n{'concurrency':>11} | {'TTFT ms path / floor':>24} | {'ITL ms path / floor':>24} | "
          f"{'tokens/s path / floor':>26}")
    for c in map(str, levels):
        p, f = path[c], base[c]
        ttft = (1000 * statistics.median(p["ttft"]), 1000 * statistics.median(f["ttft"]))
        itl = (1000 * statistics.median(p["itl"]), 1000 * statistics.median(f["itl"]))
        tps = (p["tokensPerSecond"], f["tokensPerSecond"])
        print(f"{c:>11} | {ttft[0]:7.1f} / {ttft[1]:6.1f} = {ttft[0] / ttft[1]:5.2f}x | "
              f"{itl[0]:7.1f} / {itl[1]:6.1f} = {itl[0] / itl[1]:5.2f}x | "
              f"{tps[0]:8.1f} / {tps[1]:7.1f} = {tps[0] / tps[1]:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
