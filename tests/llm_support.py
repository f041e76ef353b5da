"""Shared by the LLM tests and bench/llm.py: the engine called in-process (the floor and the reference), and a
client of Triton's generate endpoints that notes when each streamed piece arrives."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tritonlocal import vllm_venv

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["The quick brown fox", "Once upon a time there was", "What is the capital of France?"]


def in_process(checkpoint: Path, prompts: list[str], max_tokens: int = 16) -> dict[str, Any]:
    """The engine called in-process in its own venv, greedy: {"texts": [...], "engineStartSeconds": s}."""
    proc = subprocess.run([str(vllm_venv() / "bin" / "python"), str(ROOT / "hack" / "vllmlocal" / "inprocess.py"),
                           str(checkpoint), "--max-tokens", str(max_tokens)],
                          input=json.dumps(prompts), capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT " in proc.stdout, proc.stdout[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
    return result


class StreamError(RuntimeError):
    """A generate_stream event without text_output: an error the server sent in the stream."""


def generate(base_url: str, model: str, prompt: str, stream: bool = False, host: str | None = None,
             on_first: Callable[[], None] | None = None, **params: Any) -> tuple[list[str], list[float]]:
    """Triton's generate (or generate_stream) endpoint, greedy: each response's text_output, and when each
    arrived (time.monotonic). `on_first` runs when the first streamed piece is in, before the rest is read."""
    body = {"text_input": prompt, "parameters": {"stream": stream, "temperature": 0, "max_tokens": 16, **params}}
    url = f"{base_url}/v2/models/{model}/{'generate_stream' if stream else 'generate'}"
    headers = {"Content-Type": "application/json", **({"Host": host} if host else {})}
    texts, times = [], []
    request = urllib.request.Request(url, json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        if not stream:
            return [json.loads(response.read())["text_output"]], [time.monotonic()]
        for line in response:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if "text_output" not in event:  # Triton's error event: {"error": "..."}
                    raise StreamError(f"event {len(texts) + 1} of the stream: {json.dumps(event)[:500]}")
                texts.append(event["text_output"])
                times.append(time.monotonic())
                if on_first is not None and len(texts) == 1:
                    on_first()
    return texts, times


def running(metrics_url: str, model: str) -> float:
    """vllm:num_requests_running of `model` on a Triton metrics endpoint."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(f'vllm:num_requests_running{{model="{model}"'))
