"""convert(): source -> (prune) -> export -> compress -> validate -> Triton model repository + manifest.

Content-addressed: the repository lives under a key derived from the source digest, the conversion spec, the
serving settings that go into config.pbtxt and the converter version, so the same request reuses the same
artifact instead of converting again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelyard.api.v1alpha1 import ModelFormat, ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion, Precision, Target
from modelyard.api.v1alpha1.llm import VLLMEngine
from modelyard.codepolicy import named_code
from modelyard.convert import CONVERTER_VERSION
from modelyard.convert.confine import check_tree, size_text
from modelyard.convert.errors import ConversionUnsupported, SourceRefused, SourceUnreadable, ValidationFailed
from modelyard.convert.hfcheck import check_checkpoint
from modelyard.convert.llm import DEFAULT_PROMPTS, check_and_gate, engine_args, stage_weights
from modelyard.convert.models import (
    KERAS_SUFFIXES,
    Runnable,
    Tensor,
    load_source,
    onnx_runnable,
    torchscript_runnable,
)
from modelyard.convert.nocode import check_importable, check_saved_model, samples_size
from modelyard.convert.onnxdata import companions, write_artifact
from modelyard.convert.policy import Policy
from modelyard.convert.quantize import Int8Result, to_int8
from modelyard.convert.sources import PVC_MOUNT, digest, fetch, local_path
from modelyard.convert.store import MANIFEST, Store, file_digests, open_store, verify
from modelyard.convert.transform import (
    check_supported,
    export_onnx,
    export_torchscript,
    fp16_emulation,
    prune,
    to_fp16,
)
from modelyard.convert.tritonconfig import model_config, to_pbtxt, vllm_model_config
from modelyard.convert.validate import compare, make_samples, output_names, run_all, validate
from modelyard.convert.weights import verify_weights, weights_digest

PYTHON_MODEL = Path(__file__).with_name("triton_python_model.py")


@dataclass(frozen=True)
class Request:
    """One conversion: the model's name, its source, what to make of it, and how Triton will serve it."""

    name: str
    source: ModelSource
    conversion: Conversion
    serving: Serving
    flavour: str = "native"
    """native: the platform's own backend (onnxruntime_onnx, pytorch_libtorch); python: ONNX run by the python
    backend, for Triton builds without onnxruntime (local CPU serving)."""
    policy: Policy = field(default_factory=Policy.from_env)
    """What the operator's administrator allows: code a spec may name, addresses, confinement."""

    def key(self, source_digest: str) -> str:
        basis = {
            "converter": CONVERTER_VERSION,
            "name": self.name,
            "source": {"digest": source_digest, "format": self.source.format,
                       "signature": self.source.signature.model_dump(mode="json") if self.source.signature else None},
            "conversion": self.conversion.model_dump(mode="json"),
            "serving": self.serving.model_dump(
                mode="json", include={"max_batch_size", "dynamic_batching", "instance_count", "gpus"}
            ),
            "flavour": self.flavour,
        }
        if self.source.format == ModelFormat.HUGGINGFACE:  # only here, so that tensor models keep their keys
            basis["serving"] = self.serving.model_dump(mode="json", include={"gpus", "runtime", "vllm"})
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:20]


def convert(
    request: Request, store: Path | str, workdir: Path | None = None, source_root: Path = PVC_MOUNT,
    store_endpoint: str | None = None, served_store: str | None = None,
) -> dict[str, Any]:
    """Convert and publish under `<store>/<key>/` (a directory or s3://bucket/prefix); return the manifest, with
    `reused` true when that key was published before and `repository` saying where it is. `served_store` is the
    store as the Triton pods see it (a huggingface checkpoint's model.json names its weights there); unset, the
    store's own path."""
    if request.source.format == ModelFormat.HUGGINGFACE:
        return convert_llm(request, store, workdir, source_root, store_endpoint, served_store)
    check_supported(request.conversion)
    refuse_impossible(request)
    refuse_code(request)
    samples = local_samples(request, source_root)
    target = open_store(store, store_endpoint)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scratch = Path(tmp)
        onnx_source = request.source.format == ModelFormat.ONNX
        source_path = fetch(request.source.uri, scratch, pvc_root=source_root, onnx=onnx_source,
                            policy=request.policy, max_bytes=request.conversion.source_limit())
        source_digest = digest(source_path, companions(source_path) if onnx_source else None)
        key = request.key(source_digest)
        reused, replaced = _published(target, store, key, "converted")
        if reused is not None:
            return reused
        staging = scratch / "repository"
        manifest = _convert_into(request, source_path, source_digest, key, staging, samples)
        return {**manifest, "reused": False, "repository": target.publish(key, staging),
                **({"replaced": replaced} if replaced else {})}


def _published(target: Store, store: Path | str, key: str, verb: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the manifest to return, reused) when the repository under `key` verifies; else (None, what did not match,
    for the Converted condition, or None when nothing was there)."""
    published = target.find(key)
    if published is None:
        return None, None
    problem = verify(target, key, published)
    if problem is None:
        return {**published, "reused": True, "repository": _location(store, key)}, None
    return None, (f"the stored repository under key {key} did not match its manifest ({problem}): {verb} again and "
                  "replaced")


def convert_llm(request: Request, store: Path | str, workdir: Path | None, source_root: Path,
                store_endpoint: str | None, served_store: str | None) -> dict[str, Any]:
    """A huggingface checkpoint: checked, its weights staged once, gated, its vllm repository published."""
    conv = request.conversion
    engine = request.serving.vllm or VLLMEngine()
    target = open_store(store, store_endpoint)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        scratch = Path(tmp)
        source_path = fetch(request.source.uri, scratch, pvc_root=source_root, policy=request.policy,
                            max_bytes=conv.source_limit())
        checkpoint = check_checkpoint(source_path, conv.source_limit())
        files = file_digests(source_path)
        key = request.key(weights_digest(files))
        reused, replaced = _published(target, store, key, "staged")
        if reused is not None:
            # The repository verifies; the weights its model.json names must too (content-addressed), or the
            # checkpoint is staged again and the repository replaced.
            weights = reused.get("weights") or {}
            problem = verify_weights(target, str(weights.get("key", "")))
            if problem is None:
                return reused
            replaced = (f"the staged weights under {str(weights.get('key'))[:60]} that repository {key} names did "
                        f"not match their digest ({problem}): staged again and replaced")
        prompts = list(conv.samples.prompts or DEFAULT_PROMPTS)
        _, numbers = check_and_gate(source_path, prompts, engine, request.serving.gpus,
                                    conv.tolerance.min_top1_agreement, conv.tolerance.max_perplexity_ratio)
        staged = stage_weights(target, checkpoint, files, scratch)
        repo = scratch / "repository"
        version = repo / request.name / "1"
        version.mkdir(parents=True)
        weights_path = f"{str(served_store or store).rstrip('/')}/{staged.key}"
        (repo / request.name / "config.pbtxt").write_text(vllm_model_config(request.name))
        args = engine_args(engine, weights_path, request.serving.gpus, numbers["servedDtype"])
        (version / "model.json").write_text(json.dumps(args, indent=2, sort_keys=True) + "\n")
        done = {"target": "vllm", "precision": numbers["servedDtype"], "opset": None,
                "checkpoint": checkpoint.as_dict(),
                "weights": {"key": staged.key, "path": weights_path, "reused": staged.reused,
                            **({"replaced": staged.replaced} if staged.replaced else {})}}
        manifest = _manifest(request, key, weights_digest(files), "model.json", version / "model.json",
                             validation={"llm": numbers}, done=done)
        return {**manifest, "reused": False, "repository": target.publish(key, repo),
                **({"replaced": replaced} if replaced else {})}


def refuse_code(request: Request) -> None:
    """Refuse, before anything is fetched, a spec that names code the administrator does not allow."""
    conv = request.conversion
    for what, name in named_code(conv.model_class, conv.keras_custom_objects):
        check_importable(what, name, request.policy.allowed_modules)


def local_samples(request: Request, source_root: Path) -> Conversion:
    """The conversion with its samples files as checked local paths: inside the source's mount in the conversion
    Job, never a link out of it, and no larger unpacked than conversion.maxSamplesSize."""
    conv = request.conversion
    paths: dict[str, str] = {}
    for attr, what in (("uri", "samples.uri"), ("calibration_uri", "samples.calibrationUri")):
        uri = getattr(conv.samples, attr)
        if not uri:
            continue
        claim, source_claim = urlsplit(uri).netloc, urlsplit(request.source.uri).netloc
        if uri.startswith("pvc://") and (not request.source.uri.startswith("pvc://") or claim != source_claim):
            raise SourceRefused(f"conversion.{what} is on claim {claim!r}, and only the source's claim is mounted in "
                                "the conversion Job: put the samples beside the model")
        path = local_path(uri, source_root, request.policy, f"conversion.{what}")
        if path.is_symlink() or path.exists():
            check_tree(path, f"conversion.{what}")
        if path.is_file():
            try:
                unpacked = samples_size(path)
            except (zipfile.BadZipFile, OSError):
                unpacked = 0  # not an .npz: numpy.load says what it is
            if unpacked > conv.samples_limit():
                raise SourceRefused(f"the samples file {path.name} unpacks to {size_text(unpacked)}, more than "
                                    f"conversion.maxSamplesSize ({size_text(conv.samples_limit())}): it is not read")
        paths[attr] = str(path)
    return conv.model_copy(update={"samples": conv.samples.model_copy(update=paths)}) if paths else conv


def refuse_impossible(request: Request) -> None:
    """Refuse, before anything is fetched, a request whose result could not be what it asks for."""
    conv, fmt = request.conversion, request.source.format
    saved_model = fmt == ModelFormat.TENSORFLOW_SAVEDMODEL
    if conv.target == Target.TENSORFLOW_SAVEDMODEL and (not saved_model or conv.precision != Precision.FP32
                                                        or conv.pruning is not None):
        raise ConversionUnsupported(
            "target tensorflow-savedmodel serves a SavedModel as it is (Triton's TensorFlow backend): "
            + (f"a {fmt} source is not one; use target onnx" if not saved_model else
               f"precision {conv.precision}{' and pruning' if conv.pruning else ''} cannot be honoured; use target "
               "onnx, which converts the SavedModel with tf2onnx and then compresses it"))
    if saved_model and conv.target not in (Target.ONNX, Target.TENSORFLOW_SAVEDMODEL):
        raise ConversionUnsupported(f"a TensorFlow SavedModel converts to ONNX (tf2onnx), not {conv.target}; use "
                                    "target onnx, or tensorflow-savedmodel to serve it as it is")
    if saved_model and conv.target == Target.ONNX:
        import importlib.util

        missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConversionUnsupported(
                f"converting a SavedModel to ONNX needs {' and '.join(missing)} in the converter image (pip extra "
                "converter-tensorflow, about 1.3 GB installed): build the converter with it, or set "
                "conversion.target: tensorflow-savedmodel to serve the SavedModel as it is")
    if fmt == ModelFormat.KERAS and (conv.target != Target.ONNX or conv.pruning is not None):
        raise ConversionUnsupported(
            f"a Keras model converts to ONNX{'' if conv.pruning is None else ', without pruning'}: target "
            f"{conv.target}{' and pruning' if conv.pruning else ''} cannot be honoured; use target onnx (fp32, fp16 "
            "or int8)")
    if conv.keras_custom_objects and fmt != ModelFormat.KERAS:
        raise ConversionUnsupported(f"conversion.kerasCustomObjects is for format keras, and this source is {fmt}"
                                    + ("; a PyTorch state_dict's class is conversion.modelClass"
                                       if fmt == ModelFormat.PYTORCH else ""))
    if fmt == ModelFormat.ONNX and conv.target == Target.TORCHSCRIPT:
        raise ConversionUnsupported("an ONNX source cannot be converted to TorchScript (there is no ONNX -> "
                                    "TorchScript converter that keeps the model's behaviour); use target onnx")
    signature = request.source.signature
    if (fmt == ModelFormat.PYTORCH and request.source.uri.endswith(".pt2") and conv.target == Target.TORCHSCRIPT
            and signature and any(d == -1 for t in signature.inputs for d in t.shape)):
        raise ConversionUnsupported(
            "a torch.export program cannot be converted to TorchScript keeping its variable (-1) dimensions: "
            "tracing fixes them at the example's length, and the model would fail on any other; use target onnx "
            "(the dynamo exporter keeps them)")
    if request.flavour == "python" and conv.target != Target.ONNX:
        raise ConversionUnsupported("the python flavour serves ONNX artifacts only: use target onnx with a PyTorch, "
                                    "TorchScript or ONNX source, or the native flavour")


def _location(store: Path | str, key: str) -> str:
    return f"{str(store).rstrip('/')}/{key}"


def _convert_into(request: Request, source_path: Path, source_digest: str, key: str, repo: Path,
                  conv: Conversion) -> dict[str, Any]:
    """`conv` is the request's conversion with its samples files as local paths (local_samples)."""
    serving = request.serving
    batched = serving.max_batch_size > 0
    version_dir = repo / request.name / "1"
    version_dir.mkdir(parents=True)

    if request.source.format == ModelFormat.TENSORFLOW_SAVEDMODEL and not (source_path / "saved_model.pb").is_file():
        hint = (" a .keras or .h5 file is format keras, which converts to ONNX" if source_path.suffix in KERAS_SUFFIXES
                else "")
        raise SourceUnreadable(f"{source_path.name} is not a SavedModel directory (one holding saved_model.pb);" + hint)
    if request.source.format == ModelFormat.TENSORFLOW_SAVEDMODEL:
        check_saved_model(source_path)  # served as it is or converted: Triton or TensorFlow would run its ops
    if conv.target == Target.TENSORFLOW_SAVEDMODEL:
        shutil.copytree(source_path, version_dir / "model.savedmodel")
        cfg = model_config(request.name, "savedmodel", [], [], serving)
        (repo / request.name / "config.pbtxt").write_text(to_pbtxt(cfg))
        return _manifest(request, key, source_digest, "model.savedmodel", version_dir / "model.savedmodel",
                         validation={"skipped": "a SavedModel is served as it is; Triton checks it at load"},
                         done={"target": "tensorflow-savedmodel", "precision": "unchanged", "opset": None,
                               "passedThrough": True})

    source = load_source(source_path, request.source.format, request.source.signature, conv, batched)
    reference = source
    batch_size = min(8, serving.max_batch_size) if batched else 1
    samples = make_samples(source.inputs, conv, batched, batch_size)
    first_batch = samples.validation[0]
    run_all(source, [first_batch], "source")  # samples the source cannot take are said so before any export
    achieved_sparsity = None
    if conv.pruning:
        # Validate the pruned model against the unpruned source: reload it so the reference keeps its weights.
        source = load_source(source_path, request.source.format, request.source.signature, conv, batched)
        achieved_sparsity = prune(source, conv.pruning.sparsity)

    candidate: Runnable | None
    fp16_rounded: int | None = None
    if conv.target == Target.TORCHSCRIPT:
        artifact = version_dir / "model.pt"
        export_torchscript(source, first_batch, artifact)
        ins = [_renamed(t, f"INPUT__{i}") for i, t in enumerate(source.inputs)]
        outs = [_renamed(t, f"OUTPUT__{i}") for i, t in enumerate(source.outputs)]
        candidate = torchscript_runnable(artifact, source.inputs, source.outputs)
        kind = "torchscript"
    else:
        artifact = version_dir / "model.onnx"
        if source.kind == "onnx" and not conv.pruning:
            write_artifact(source_path, artifact)  # external data inlined (or kept in one model.onnx.data)
        else:
            export_onnx(source, first_batch, artifact, conv.opset, batched, pruned=conv.pruning is not None)
        candidate = None
        if conv.precision == Precision.FP16:
            to_fp16(artifact)
            # Judged in fp16 arithmetic: onnxruntime's CPU provider would compute the fp16 graph in fp32.
            emulation = repo.parent / f"fp16-emulation-{request.name}.onnx"
            fp16_rounded = fp16_emulation(artifact, emulation)
            candidate = onnx_runnable(emulation, batched)
        served = onnx_runnable(artifact, batched)
        candidate = candidate or served
        ins, outs = served.inputs, served.outputs
        kind = "onnx"

    declared = None
    if request.source.signature:
        declared = [_tensor(t) for t in request.source.signature.outputs]
    int8: Int8Result | None = None
    if conv.precision == Precision.INT8:
        want = run_all(reference, samples.validation, "source")
        names = output_names(reference, candidate)
        reports = []

        def check(path: Path) -> tuple[bool, str, float | None]:
            reports.append(compare(want, onnx_runnable(path, batched), samples, conv, batched, names, declared))
            if reports[-1].inconclusive:  # a property of the source and samples: no quantization changes it
                raise reports[-1].error()
            last = reports[-1]
            return last.passed, "; ".join(last.problems) or last.summary(), last.top1_agreement

        int8 = to_int8(artifact, conv, samples.calibration, check)
        report = reports[-1]
        if not report.passed:
            raise report.error().extend(_fallback_story(int8))
    else:
        try:
            report = validate(reference, candidate, samples, conv, batched, declared)
        except ValidationFailed as exc:
            if fp16_rounded is None:
                raise
            raise exc.extend(" (computed in fp16 arithmetic, as the model serves on a GPU: a value over 65504 "
                             "overflows and fp16 keeps about 3 significant digits; onnxruntime on this CPU would "
                             "have computed the fp16 graph in fp32 and hidden it. Use fp32, or scale the model)"
                             ) from None

    backend = "python" if request.flavour == "python" else None
    if backend:  # refuse_impossible made sure the artifact is ONNX
        shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
    cfg = model_config(request.name, kind, ins, outs, serving, backend=backend)
    (repo / request.name / "config.pbtxt").write_text(to_pbtxt(cfg))
    validation = report.as_dict()
    if fp16_rounded is not None:
        validation["arithmetic"] = (f"fp16: every fp16 tensor rounded to fp16 between ops ({fp16_rounded} node "
                                    "outputs), fp32 within them, as GPU kernels accumulate")
    if achieved_sparsity is not None:
        validation["sparsity"] = achieved_sparsity
    return _manifest(request, key, source_digest, artifact.name, artifact, validation,
                     done={"int8": int8.as_dict()} if int8 else None)


def _fallback_story(int8: Int8Result) -> str:
    tried = ", ".join("all int8 with 7-bit weights" if a.weight_bits == 7 else
                      f"{len(a.kept_float)} node{'s' if len(a.kept_float) != 1 else ''} kept in fp32"
                      for a in int8.attempts[1:])
    stopped = f"; the fallback stopped: {int8.stopped}" if int8.stopped else ""
    if not tried and stopped:
        return f" (plain int8 failed{stopped}. Use fp16, or give calibration samples from real data)"
    if not tried:
        return " (int8FallbackAttempts is 0: no node was kept in fp32)"
    return (f" (after plain int8 failed, the fallback tried {tried}{stopped}; the last kept {int8.kept_float[:8]} at "
            f"{int8.size_ratio:.0%} of the fp32 size. This model does not hold the tolerance in int8: use fp16, "
            "give calibration samples from real data (conversion.samples.calibrationUri), or allow more attempts)")


def _tensor(spec: Any) -> Tensor:
    return Tensor(spec.name, spec.data_type, tuple(spec.shape))


def _renamed(t: Tensor, name: str) -> Tensor:
    return Tensor(name, t.data_type, t.dims)


def _manifest(request: Request, key: str, source_digest: str, artifact_name: str, artifact: Path,
              validation: dict[str, Any], done: dict[str, Any] | None = None) -> dict[str, Any]:
    """What was made, as it was made: `done` overrides what the request asked for where that was not done."""
    manifest = {
        "converterVersion": CONVERTER_VERSION,
        "converterImage": os.environ.get("MODELYARD_CONVERTER_IMAGE") or None,
        "key": key,
        "model": request.name,
        "source": {"format": str(request.source.format), "digest": f"sha256:{source_digest}"},
        "target": str(request.conversion.target),
        "precision": str(request.conversion.precision),
        "opset": request.conversion.opset if request.conversion.target == Target.ONNX else None,
        "flavour": request.flavour,
        "artifact": {
            "path": f"{request.name}/1/{artifact_name}",
            "sha256": digest(artifact),
            "bytes": sum(p.stat().st_size for p in ([artifact, *artifact.parent.glob(artifact.name + ".data")]
                                                    if artifact.is_file() else artifact.rglob("*")) if p.is_file()),
        },
        "validation": validation,
        **(done or {}),
        "files": file_digests(artifact.parents[2]),
    }
    (artifact.parents[2] / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
