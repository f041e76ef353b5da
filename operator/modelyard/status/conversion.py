"""Read a conversion Job and its pod: running, succeeded with a result, or failed and why.

The converter's termination message is not trusted (a converter that ran a user's model class could have written
anything there): a result's key must be a key the converter makes (KEY), and every message passes through the
redaction before it reaches a condition or an event.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from modelyard.api.conditions import Reason
from modelyard.redact import redact_text
from modelyard.status.revision import pending_problem

KEY = re.compile(r"^[0-9a-f]{20}$")
"""A converted repository's key: the first 20 hex digits of a sha256 (modelyard.convert.pipeline.Request.key)."""

Obj = dict[str, Any]

_FAILURE_REASONS = {
    "ValidationFailed": Reason.VALIDATION_FAILED,
    "ValidationInconclusive": Reason.VALIDATION_INCONCLUSIVE,
    "ConversionUnsupported": Reason.CONVERSION_UNSUPPORTED,
    "SourceRefused": Reason.SOURCE_REFUSED,
    "SourceUnavailable": Reason.SOURCE_UNAVAILABLE,
    "SourceUnreadable": Reason.SOURCE_UNREADABLE,
    "PickledWeights": Reason.PICKLED_WEIGHTS,
    "CustomCode": Reason.CUSTOM_CODE,
    "TokenizerUnusable": Reason.TOKENIZER_UNUSABLE,
    "ArchitectureUnsupported": Reason.ARCHITECTURE_UNSUPPORTED,
    "WeightsCorrupt": Reason.WEIGHTS_CORRUPT,
}


@dataclass(frozen=True)
class ConversionState:
    done: bool
    """True when the converted model passed validation: `key` names its repository."""
    failed: bool
    reason: str
    message: str
    key: str | None = None
    result: Obj | None = None


def _terminated(pod: Obj) -> Obj | None:
    for cs in pod.get("status", {}).get("containerStatuses", []):
        if cs.get("name") == "converter" and cs.get("state", {}).get("terminated"):
            term: Obj = cs["state"]["terminated"]
            return term
    return None


def _parse(message: str) -> Obj | None:
    try:
        parsed = json.loads(message)
    except (json.JSONDecodeError, TypeError):
        return None
    return parsed if isinstance(parsed, dict) and "ok" in parsed else None


def _job_condition(job: Obj, type_: str) -> Obj | None:
    return next((c for c in job.get("status", {}).get("conditions", [])
                 if c.get("type") == type_ and c.get("status") == "True"), None)


def observe_conversion(job: Obj | None, pods: list[Obj]) -> ConversionState:
    """What the Job and its pods say. The newest terminated pod with a result wins."""
    if job is None:
        return ConversionState(False, False, Reason.CONVERTING, "creating the conversion Job")
    name = job["metadata"]["name"]
    finished = sorted(
        (p for p in pods if _terminated(p) is not None),
        key=lambda p: str(_terminated(p).get("finishedAt", "")),  # type: ignore[union-attr]
    )
    for pod in reversed(finished):
        term = _terminated(pod) or {}
        result = _parse(term.get("message", ""))
        if result is None:
            continue
        if result["ok"]:
            key = str(result.get("key"))
            if not KEY.match(key):
                return ConversionState(False, True, Reason.CONVERSION_FAILED,
                                       f"Job {name}'s result names the key {redact_text(key[:40])!r}, which is not a "
                                       "key the converter makes (20 hex digits): it is not served", result=None)
            return ConversionState(True, False, Reason.CONVERTED, "", key=key, result=_redacted(result))
        reason = _FAILURE_REASONS.get(str(result.get("reason")), Reason.CONVERSION_FAILED)
        return ConversionState(False, True, reason, redact_text(str(result.get("message", ""))), result=result)
    failed = _job_condition(job, "Failed")
    if failed:
        last = finished[-1] if finished else None
        words = ""
        if last:
            term = _terminated(last) or {}
            words = f"; exit code {term.get('exitCode')}: {redact_text(str(term.get('message', '')).strip()[-500:])}"
        return ConversionState(False, True, Reason.CONVERSION_FAILED,
                               f"Job {name} failed ({failed.get('reason')}: {failed.get('message', '')}){words}")
    if _job_condition(job, "Complete"):
        return ConversionState(False, True, Reason.CONVERSION_FAILED,
                               f"Job {name} completed but its pod left no result in its termination message")
    pending = pending_problem(pods)
    if pending:  # not failed (capacity or the image may come), but not running either: say why, at once
        return ConversionState(False, False, pending[0], f"Job {name}: the converter pod is not running: {pending[1]}")
    return ConversionState(False, False, Reason.CONVERTING, f"Job {name} is running the converter")


def _redacted(value: Any) -> Any:
    """Every string of a result redacted (it is shown in conditions)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value


def describe_artifact(result: Obj) -> str:
    art = result.get("artifact", {})
    reused = " (reused: converted before, verified)" if result.get("reused") else ""
    if result.get("replaced"):
        reused = f" ({result['replaced']})"
    digest = str(art.get("sha256", ""))[:12]
    return f"{art.get('path')} sha256:{digest} {art.get('bytes')} bytes, key {result.get('key')}{reused}"


def describe_validation(result: Obj) -> str:
    v = result.get("validation", {})
    if "skipped" in v:
        return f"not validated: {v['skipped']}"
    if "llm" in v:
        return describe_llm_validation(v["llm"])
    top1 = f", top-1 agreement {v['top1_agreement']:.4f}" if v.get("top1_agreement") is not None else ""
    atol = v.get("atol") if v.get("atol") is not None else f"{v.get('atol_spread')} x spread"
    int8 = result.get("int8") or {}
    kept = (f"; int8 with {int8['keptFloat']} node(s) kept in fp32, {int8['sizeRatio']:.0%} of the fp32 size"
            if int8.get("keptFloat") else "")
    arithmetic = "; computed in fp16 arithmetic (emulated on CPU)" if v.get("fp16") else ""
    return (f"{v.get('samples')} samples: max abs error {v.get('max_abs_error', 0):.3g}, "
            f"max rel error {v.get('max_rel_error', 0):.3g}{top1} (atol {atol}, rtol {v.get('rtol')}){kept}"
            f"{arithmetic}")


def describe_llm_validation(llm: Obj) -> str:
    """The gate's numbers for a language model, as the Validated condition says them."""
    text = (f"{llm.get('prompts')} prompts: the tokenizer gives each back, they generate {llm.get('generatedTokens')} "
            f"tokens greedily, repeatably; served in {llm.get('servedDtype')}")
    cast = llm.get("cast")
    if isinstance(cast, dict):
        agreement, ratio = float(cast.get("top1Agreement", 0)), float(cast.get("perplexityRatio", 0))
        text += (f" (cast from {cast.get('from')}: next-token top-1 agreement {agreement:.4f} over "
                 f"{cast.get('positions')} positions, perplexity ratio {ratio:.4f})")
    else:
        text += ", the checkpoint's own dtype: nothing cast"
    return text
