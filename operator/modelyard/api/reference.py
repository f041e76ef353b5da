"""docs/api.md, generated from the same schema as the CRD (`modelyard docs`), so the reference cannot drift."""

from __future__ import annotations

import json
from typing import Any

from modelyard.api.conditions import Reason
from modelyard.api.crdgen import model_deployment_crd

REASONS: dict[Reason, str] = {
    Reason.AVAILABLE: "True: the revision the spec asks for serves all traffic with every replica ready.",
    Reason.PROGRESSING: "A revision is rolling out; the message counts ready replicas and names the revision that "
    "keeps serving meanwhile.",
    Reason.UNSCHEDULABLE: "A pod of the revision fits no node; the message is the scheduler's own "
    "(`0/3 nodes are available: 3 Insufficient nvidia.com/gpu`).",
    Reason.IMAGE_PULL_BACK_OFF: "The Triton image cannot be pulled (check `serving.image` and pull access).",
    Reason.ERR_IMAGE_PULL: "The Triton image cannot be pulled.",
    Reason.CRASH_LOOP_BACK_OFF: "Triton exits at start, most often because the model repository cannot be read.",
    Reason.CREATE_CONTAINER_CONFIG_ERROR: "The pod cannot be configured, for example the credentials Secret is "
    "missing.",
    Reason.CONTAINER_TERMINATED: "A Triton container of a pod that is not ready has exited; the message has the "
    "pod, the exit code, the kubelet's reason and the container's last words. The kubelet restarts it.",
    Reason.WEIGHTS_UNVERIFIED: "An LLM pod's init container `weights` found the model repository, or the staged "
    "weights its model.json names, other than they were staged (a file's sha256, a file not in the manifest, a "
    "manifest whose digests do not hash to the weights' key, model.json naming something else): Triton is not "
    "started on them. The message says what differs; the revision that serves is not touched.",
    Reason.CONTAINER_RESTARTED: "A Triton container restarted after an exit (the message says how it ended) and "
    "its readiness probe has not passed again yet.",
    Reason.PROGRESS_DEADLINE_EXCEEDED: "The revision did not become available within 15 minutes.",
    Reason.SOURCE_UNSUPPORTED: "The model source cannot be served as it is (an http(s) source without "
    "spec.conversion).",
    Reason.INVALID_SPEC: "The spec passed the CRD schema but not the operator's own model (an operator/CRD "
    "version mismatch).",
    Reason.APPLY_REJECTED: "The API server refused a child object; the message quotes it.",
    Reason.SECRET_NOT_FOUND: "A Secret the spec names (model.credentialsSecretRef, "
    "conversion.storeCredentialsSecretRef) does not exist; nothing of the revision is created until it does.",
    Reason.SECRET_INCOMPLETE: "A Secret the spec names lacks keys its use needs (for s3: AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY); the message names the missing keys, never a value.",
    Reason.RECONCILE_FAILED: "The operator failed on this object in a way it did not foresee (a bug: please "
    "report it with the message); it tries again with back-off.",
    Reason.NAME_CONFLICT: "A Service, HTTPRoute or autoscaler with the model's name exists and belongs to "
    "something else.",
    Reason.CONVERTING: "The latest revision's conversion Job is running; the serving revision keeps serving.",
    Reason.CONVERTED: "Converted=True: the artifact, its size and digest are in the message.",
    Reason.VALIDATED: "Validated=True: samples, max abs/rel error and top-1 agreement are in the message.",
    Reason.VALIDATION_FAILED: "The converted model does not compute what the source does (numbers in the "
    "message: error beyond tolerance relative to the output's spread, top-1 agreement of a declared classifier "
    "output, NaN/Inf, a shape that breaks the signature, a failure on a sample length; with int8, what the "
    "fallback tried); it is not served.",
    Reason.VALIDATION_INCONCLUSIVE: "The samples cannot tell a right conversion from a wrong one: the source's "
    "output hardly varies over them, or a classifier output puts every sample in one class, or the source "
    "fails on them. Give samples that exercise the model (conversion.samples.uri); nothing is served.",
    Reason.CONVERSION_UNSUPPORTED: "The request cannot be honoured, and is refused before any work: TensorRT "
    "without a GPU, int8 TorchScript, ONNX to TorchScript, a SavedModel asked for another target or precision.",
    Reason.SOURCE_REFUSED: "The source is not loaded: it would run code (a pickle that holds more than tensors, "
    "TorchScript or a SavedModel that reads or writes files, a Lambda layer), it reaches outside itself (a symlink "
    "or a path out of the source, ONNX external data outside its directory, a loopback or private address), or it "
    "is over conversion.maxSourceSize or maxSamplesSize (docs/security.md).",
    Reason.MODULE_NOT_ALLOWED: "conversion.modelClass or kerasCustomObjects names a module the operator's "
    "administrator does not allow (converter.allowedModules), or one of the standard library or the converter's "
    "own: no conversion Job is created (docs/security.md).",
    Reason.PICKLED_WEIGHTS: "A huggingface checkpoint holds pickle files (.bin, .pt, .pth, .ckpt, .pkl): loading "
    "them can run code, so nothing is staged. Save the weights as safetensors (save_pretrained(..., "
    "safe_serialization=True)) and remove the pickles (docs/llm.md).",
    Reason.CUSTOM_CODE: "A huggingface checkpoint brings its own code: auto_map in config.json or "
    "tokenizer_config.json, or Python files. The engine never runs it (no trust_remote_code); use an architecture "
    "the engine has built in.",
    Reason.TOKENIZER_UNUSABLE: "A huggingface checkpoint has no tokenizer (tokenizer.json, tokenizer.model, or "
    "vocabulary files), or it does not load, or it does not give the prompts back as they were.",
    Reason.ARCHITECTURE_UNSUPPORTED: "config.json's architectures names a model the vLLM runtime does not serve "
    "(the message lists the ones it does), or none.",
    Reason.WEIGHTS_CORRUPT: "A safetensors file's header disagrees with the file (length, offsets, a tensor's byte "
    "count), or the shard index names a file or tensor that is not there: truncated or tampered with.",
    Reason.SOURCE_UNAVAILABLE: "The source cannot be read (missing object or external data file, wrong "
    "credentials).",
    Reason.SOURCE_UNREADABLE: "The source was fetched but is not a model of its declared format: truncated, "
    "corrupt, or another format (the message names what was expected).",
    Reason.CONVERSION_FAILED: "The conversion failed without a more precise reason: the Job failed without a result "
    "(deadline, out of memory, crash) or the converter met an error nobody foresaw; the message quotes it.",
    Reason.CANARY_PROGRESSING: "Progressing=True: the canary got a new weight or passed an analysis (numbers in the "
    "message and the event).",
    Reason.CANARY_WAITING: "Progressing=True: the canary waits: for its pods to be Ready (with autoscaling, enough "
    "of them for its next weight, or for all traffic before promotion), for a passing analysis (too little traffic "
    "is inconclusive), or for a pause to end.",
    Reason.CANARY_PAUSED: "Progressing=True: held by `spec.rollout.paused` or an indefinite pause step until a person "
    "resumes (docs/rollouts.md).",
    Reason.CANARY_PROMOTED: "Progressing=True: the canary was promoted and serves all traffic; its predecessor "
    "drains at weight 0, then goes.",
    Reason.CANARY_ROLLED_BACK: "Progressing=False: the canary failed a check (the numbers are in the message), its "
    "pods failed, or a person aborted it; weight 0, scaled down, not retried until the spec changes. Ready stays "
    "True on the stable revision.",
    Reason.ROLLOUT_COMPLETE: "Progressing=True: no canary; the latest revision serves all traffic.",
    Reason.SCALED_TO_ZERO: "True: spec.scaling.minReplicas is 0 and the serving revision was idle for "
    "scaling.idlePeriod, so it runs no pod. A request through the gateway wakes it; until its first pod is ready "
    "the gateway answers 503 (status.scaling.lastColdStartSeconds says how long that took last time).",
    Reason.PROMETHEUS_NOT_CONFIGURED: "spec.scaling with engine keda needs the operator's Prometheus address "
    "(chart value rollouts.prometheusUrl).",
    Reason.SCALED_FROM_ZERO: "Event: the serving revision left zero; the note says how long until its first pod "
    "was ready.",
}


def _type(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = node.get("type", "object")
    if kind == "array":
        return f"[]{_type(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map[string]{_type(node['additionalProperties'])}"
    return str(kind)


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, label in (("minimum", ">="), ("maximum", "<="), ("minItems", "items >="), ("maxItems", "items <="),
                       ("maxLength", "length <=")):
        if key in node:
            exclusive = node.get(f"exclusive{key[0].upper()}{key[1:]}") is True  # exclusiveMinimum: > not >=
            parts.append(f"{label.rstrip('=') if exclusive else label} {node[key]}")
    if node.get("x-kubernetes-list-map-keys"):
        parts.append("unique by " + ", ".join(node["x-kubernetes-list-map-keys"]))
    return "; ".join(parts)


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    default = node.get("default")
    shown_default = "" if default is None or isinstance(default, dict) else f"`{json.dumps(default)}`"
    desc = " ".join(str(node.get("description", "")).split()).replace("|", "\\|")
    req = " (required)" if required else ""
    rows = [f"| `{path}`{req} | {_type(node)} | {shown_default} | {desc} | {_constraints(node)} |"]
    child = node.get("items", node) if node.get("type") == "array" else node
    needed = set(child.get("required", []))
    for name, sub in child.get("properties", {}).items():
        rows += _rows(sub, f"{path}[].{name}" if child is not node else f"{path}.{name}", name in needed)
    return rows


def _rules(node: Any, path: str) -> list[str]:
    out: list[str] = []
    if isinstance(node, dict):
        for rule in node.get("x-kubernetes-validations", []):
            out.append(f"- on `{path or '.'}`: {rule['message']}")
        for name, sub in node.get("properties", {}).items():
            out += _rules(sub, f"{path}.{name}")
    return out


def api_reference_markdown() -> str:
    version = model_deployment_crd()["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        "<!-- Generated by `make crds` (modelyard docs) from the pydantic models. Do not edit by hand. -->",
        "# ModelDeployment v1alpha1 reference",
        "",
        "`apiVersion: modelyard.dev/v1alpha1`, `kind: ModelDeployment`, namespaced, short name `mdep`, category "
        "`modelyard`. The same text is available in the cluster with `kubectl explain modeldeployment.spec`.",
        "",
        "## spec",
        "",
        "| field | type | default | description | constraints |",
        "| --- | --- | --- | --- | --- |",
        *_rows(schema["properties"]["spec"], "spec", True)[1:],
        "",
        "## Rules checked at `kubectl apply`",
        "",
        "Besides types, bounds and enums, the API server checks these rules (CEL) and answers with the message:",
        "",
        *_rules(schema, ""),
        "",
        "## status",
        "",
        "| field | type | default | description | constraints |",
        "| --- | --- | --- | --- | --- |",
        *_rows(schema["properties"]["status"], "status", False)[1:],
        "",
        "## Condition reasons (Ready, Converted, Validated, Progressing)",
        "",
        "`Reconciling` and `Stalled` (kstatus, for Flux and Argo CD: [gitops.md](gitops.md)) are present only while "
        "True and repeat the reason and message of the condition they summarise.",
        "",
        "| reason | meaning |",
        "| --- | --- |",
        *[f"| `{reason}` | {text} |" for reason, text in REASONS.items()],
        "",
        "## Printer columns",
        "",
        "| column | from | shown |",
        "| --- | --- | --- |",
        *[f"| {c['name']} | `{c['jsonPath']}` | {'with -o wide' if c.get('priority') else 'always'} |"
          for c in version["additionalPrinterColumns"]],
        "",
    ]
    return "\n".join(lines)
