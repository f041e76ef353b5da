"""A Hugging Face checkpoint staged once, checked, gated, and given a Triton repository for the vLLM backend.

  <store>/weights/<digest>/   the checkpoint's files as they were, with a manifest of their sha256; the digest is
                              of those files, so revisions and replicas that share the weights share the copy
                              (engine settings are not part of it).
  <store>/<key>/<model>/      config.pbtxt (backend vllm, decoupled) and 1/model.json (the engine's settings, its
                              "model" the staged weights as the Triton pod sees them), with the repository's
                              manifest: what was checked and the gate's numbers.

The gate (docs/llm.md): the tokenizer gives the prompts back, every prompt generates tokens, greedy generation
repeats; where the served dtype differs from the checkpoint's, next-token top-1 agreement over every position of
the prompts and the perplexity ratio on them, cast against the checkpoint.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.api.v1alpha1.llm import LLMDType, VLLMEngine
from modelyard.convert.errors import ConversionFailed, TokenizerUnusable, ValidationFailed
from modelyard.convert.hfcheck import Checkpoint, check_checkpoint, load_tokenizer
from modelyard.convert.store import MANIFEST, DirectoryStore, Store
from modelyard.convert.weights import WEIGHTS, verify_weights, weights_digest

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
    "Translate to German: Good morning, how are you?",
    "The three primary colours are",
    "Q: What is 12 times 7?\nA:",
    "Kubernetes schedules pods onto nodes by",
    "In 1969, the first humans to walk on the Moon",
)
NEW_TOKENS = 16
"""Tokens each prompt generates in the gate."""
DEFAULT_MIN_NEXT_TOKEN_AGREEMENT = 0.98
DEFAULT_MAX_PERPLEXITY_RATIO = 1.05


def served_dtype(checkpoint_dtype: str, engine: VLLMEngine, gpus: int) -> str:
    """The dtype the engine computes in: the setting, or for auto the checkpoint's, where vLLM runs a float32
    checkpoint in float16 on GPUs (on CPU it keeps float32)."""
    if engine.dtype != LLMDType.AUTO:
        return str(engine.dtype)
    if checkpoint_dtype == "float32" and gpus > 0:
        return "float16"
    return checkpoint_dtype


@dataclass(frozen=True)
class Staged:
    key: str
    reused: bool
    replaced: str | None = None


def stage_weights(store: Store, checkpoint: Checkpoint, files: dict[str, str], scratch: Path) -> Staged:
    """The checkpoint under weights/<digest> in the store, once: reused when the copy there verifies, copied (or
    copied again, replacing a copy that does not verify) otherwise."""
    key = f"{WEIGHTS}/{weights_digest(files)}"
    published = store.find(key)
    problem = None
    if published is not None:
        problem = verify_weights(store, key, published)
        if problem is None:
            return Staged(key, True)
    # Beside its final place where the store is a directory (a claim): one copy, then a rename, nothing through
    # the converter's scratch space.
    staging = (store.root / f".staging-{uuid.uuid4().hex[:12]}" if isinstance(store, DirectoryStore)
               else scratch / "weights")
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(checkpoint.root, staging, symlinks=False)
    (staging / MANIFEST).write_text(json.dumps({"key": key, "files": files, "checkpoint": checkpoint.as_dict()},
                                               indent=2, sort_keys=True) + "\n")
    store.publish(key, staging)
    return Staged(key, False, f"the staged weights under {key} did not match their manifest ({problem}): copied "
                  "again" if problem else None)


def engine_args(engine: VLLMEngine, weights_path: str, gpus: int, dtype: str) -> dict[str, Any]:
    """model.json: the vLLM engine arguments Triton's vLLM backend passes to the engine."""
    args: dict[str, Any] = {
        "model": weights_path,
        "tokenizer": weights_path,
        "trust_remote_code": False,
        "load_format": "safetensors",
        "dtype": dtype,
        "kv_cache_dtype": str(engine.kv_cache_dtype),
        "max_num_seqs": engine.max_concurrent_sequences,
        "gpu_memory_utilization": engine.gpu_memory_utilization,
        "enable_prefix_caching": engine.prefix_caching,
        "tensor_parallel_size": engine.tensor_parallel(gpus),
        "pipeline_parallel_size": engine.pipeline_parallel(gpus),
        "disable_log_stats": False,
    }
    if engine.max_model_length is not None:
        args["max_model_len"] = engine.max_model_length
    if engine.quantization is not None:
        args["quantization"] = str(engine.quantization)
    return args


def check_and_gate(root: Path, prompts: list[str], engine: VLLMEngine, gpus: int, min_agreement: float | None,
                   max_ppl_ratio: float | None, max_bytes: int | None = None) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint's checks, then the gate's; the gate's numbers."""
    checkpoint = check_checkpoint(root, max_bytes)  # again: cheap, and the gate may be called on its own
    tokenizer = load_tokenizer(root)
    round_trip(tokenizer, prompts)
    dtype = served_dtype(checkpoint.dtype, engine, gpus)
    numbers = generate_checks(root, tokenizer, prompts, checkpoint.dtype)
    if dtype != checkpoint.dtype:
        cast = measure_cast(root, tokenizer, prompts, checkpoint.dtype, dtype)
        numbers["cast"] = cast
        agreement = min_agreement if min_agreement is not None else DEFAULT_MIN_NEXT_TOKEN_AGREEMENT
        ratio = max_ppl_ratio if max_ppl_ratio is not None else DEFAULT_MAX_PERPLEXITY_RATIO
        problems = []
        if cast["top1Agreement"] < agreement:
            problems.append(f"next-token top-1 agreement {cast['top1Agreement']:.4f} < {agreement}")
        if not cast["perplexityRatio"] <= ratio:
            problems.append(f"perplexity ratio {cast['perplexityRatio']:.4f} > {ratio}")
        if problems:
            raise ValidationFailed(
                f"the engine would compute in {dtype} and the checkpoint is {checkpoint.dtype}: over "
                f"{cast['positions']} positions of {len(prompts)} prompts, {'; '.join(problems)}. Serve it in "
                f"{checkpoint.dtype} (serving.vllm.dtype), or loosen conversion.tolerance if that is acceptable")
    numbers.update({"servedDtype": dtype, "checkpointDtype": checkpoint.dtype})
    return checkpoint, numbers


def round_trip(tokenizer: Any, prompts: list[str]) -> None:
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids, skip_special_tokens=False)
        if back != prompt:
            raise TokenizerUnusable(f"the tokenizer does not give prompt {i} back: {prompt[:80]!r} became "
                                    f"{back[:80]!r} ({len(ids)} tokens)")


def _model(root: Path, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(root), trust_remote_code=False, use_safetensors=True,
                                                     local_files_only=True, dtype=getattr(torch, dtype))
    except Exception as exc:
        raise ConversionFailed(f"the checkpoint does not load as its config says: {type(exc).__name__}: "
                               f"{str(exc)[:600]}") from None
    model.eval()  # type: ignore[no-untyped-call]
    return model


def generate_checks(root: Path, tokenizer: Any, prompts: list[str], dtype: str) -> dict[str, Any]:
    """Every prompt generates tokens, and greedy generation gives the same tokens twice."""
    import torch

    model = _model(root, dtype)
    runs = []
    for _ in range(2):
        outs = []
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                     do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            outs.append(out[0, ids.shape[1]:].tolist())
        runs.append(outs)
    silent = [i for i, toks in enumerate(runs[0]) if not toks or toks[0] == tokenizer.eos_token_id]
    if silent:
        raise ValidationFailed(f"prompt{'s' if len(silent) > 1 else ''} {silent} generate no token (the first "
                               "greedy token ends the sequence): the model answers nothing to them")
    differ = [i for i, (a, b) in enumerate(zip(*runs, strict=True)) if a != b]
    if differ:
        raise ValidationFailed(f"greedy generation is not repeatable: prompts {differ} gave different tokens on a "
                               "second run")
    return {"prompts": len(prompts), "generatedTokens": sum(len(t) for t in runs[0]), "repeatable": True,
            "greedy": [tokenizer.decode(t) for t in runs[0]]}


def measure_cast(root: Path, tokenizer: Any, prompts: list[str], source: str, cast: str) -> dict[str, Any]:
    """Next-token top-1 agreement over every position of the prompts, and the perplexity ratio on them."""
    import torch

    def logits(dtype: str) -> list[Any]:
        model = _model(root, dtype)
        with torch.inference_mode():
            return [model(ids).logits[0].float() for ids in inputs]

    inputs = [tokenizer(p, return_tensors="pt")["input_ids"] for p in prompts]
    want, got = logits(source), logits(cast)
    agree = positions = 0
    nll = {"source": 0.0, "cast": 0.0}
    scored = 0
    for ids, a, b in zip(inputs, want, got, strict=True):
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        positions += a.shape[0]
        targets = ids[0, 1:]
        if len(targets):
            for name, lg in (("source", a), ("cast", b)):
                nll[name] += float(torch.nn.functional.cross_entropy(lg[:-1], targets, reduction="sum"))
            scored += len(targets)
    ratio = float(torch.exp(torch.tensor((nll["cast"] - nll["source"]) / max(scored, 1))))
    return {"from": source, "to": cast, "positions": positions, "top1Agreement": agree / max(positions, 1),
            "perplexityRatio": ratio, "finite": all(bool(torch.isfinite(b).all()) for b in got)}
