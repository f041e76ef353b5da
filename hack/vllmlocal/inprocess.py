"""The engine called in-process, the floor the local serving path is compared against (tests, bench/llm.py).

Run with the engine venv's interpreter: `<vllm venv>/bin/python hack/vllmlocal/inprocess.py CHECKPOINT` reads a
JSON list of prompts on standard input and prints one line, RESULT and JSON (the engine logs on standard output
too): the greedy output text of each (max_tokens from --max-tokens), and the engine's start time. The engine
starts its processes with multiprocessing spawn, so everything runs under the __main__ guard.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--bench", default=None,
                        help="comma-separated concurrencies: time to first token, inter-token latency and output "
                        "tokens/s of streamed greedy requests (bench/llm.py's floor)")
    parser.add_argument("--requests", type=int, default=2, help="with --bench: requests per unit of concurrency")
    args = parser.parse_args()
    prompts = json.loads(sys.stdin.read())
    if args.bench:
        import asyncio

        levels = [int(c) for c in args.bench.split(",")]
        result = asyncio.run(bench(args, prompts, levels))
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    start = time.monotonic()
    from vllm import LLM, SamplingParams

    llm = LLM(model=args.checkpoint, dtype="float32", enforce_eager=True, max_model_len=args.max_model_len,
              max_num_seqs=8, trust_remote_code=False)
    started = time.monotonic() - start
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens), use_tqdm=False)
    print("RESULT " + json.dumps({"texts": [o.outputs[0].text for o in outs], "engineStartSeconds": started}),
          flush=True)
    return 0


async def bench(args: argparse.Namespace, prompts: list[str], levels: list[int]) -> dict[str, object]:
    """Each level: concurrency c, c * --requests streamed requests of exactly --max-tokens tokens (ignore_eos).
    Per request: time to first token, and (last - first) / (tokens - 1) as its inter-token latency, measured where
    the pieces arrive, as bench/llm.py measures them at the HTTP client."""
    import asyncio

    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=args.checkpoint, dtype="float32", enforce_eager=True, max_model_len=args.max_model_len,
        max_num_seqs=32, trust_remote_code=False))
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True,
                            output_kind=RequestOutputKind.DELTA)
    out: dict[str, object] = {}
    for c in levels:
        gate = asyncio.Semaphore(c)

        async def one(i: int, c: int = c, gate: asyncio.Semaphore = gate) -> tuple[float, float]:
            async with gate:
                start = time.monotonic()
                first = last = 0.0
                async for o in engine.generate(prompts[i % len(prompts)], params, f"{c}-{i}"):
                    if o.outputs[0].token_ids:
                        last = time.monotonic()
                        first = first or last
                return first - start, (last - first) / max(args.max_tokens - 1, 1)

        begin = time.monotonic()
        timings = await asyncio.gather(*(one(i) for i in range(c * args.requests)))
        wall = time.monotonic() - begin
        out[str(c)] = {"ttft": [t for t, _ in timings], "itl": [g for _, g in timings],
                       "tokensPerSecond": c * args.requests * args.max_tokens / wall}
    engine.shutdown()
    return out


if __name__ == "__main__":
    sys.exit(main())
