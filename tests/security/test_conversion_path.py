"""The hostile-model suite: one or more crafted cases for every class of attack on the conversion path
(docs/security.md has the table). Each asserts the specific refusal (reason and the key words of the message) and
that nothing ran, was read, was written or leaked: marker files that a payload writes when its code runs, sentinel
secrets grepped in every output, and paths outside the work directory checked."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch
import yaml

import hostile_models as hm
from convert_models import source
from helpers import moto_s3, serving
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.errors import ConversionError
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.policy import Policy

pytestmark = [pytest.mark.converter, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")

CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 8})
LOOPBACK = Policy(allowed_cidrs=("127.0.0.0/8",))
SIG = hm.AFFINE_SIGNATURE


def request(uri: str, fmt: str, signature: dict[str, Any] | None = SIG, conversion: dict[str, Any] | None = None,
            policy: Policy = LOOPBACK) -> Request:
    return Request("m", ModelSource.model_validate(source(uri, fmt, signature)),
                   Conversion.model_validate(conversion or {}), CPU, policy=policy)


def refused(req: Request, tmp_path: Path, reason: str, *words: str, **kwargs: Any) -> str:
    """Convert, expect the refusal `reason` with `words` in its message; nothing may be published."""
    store = tmp_path / "store"
    with pytest.raises(ConversionError) as err:
        convert(req, store, **kwargs)
    message = err.value.message
    assert err.value.reason == reason, message
    for w in words:
        assert w in message, f"{w!r} not in: {message}"
    assert not store.exists() or not any(store.iterdir()), "a refused conversion published something"
    return message


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "marker"
    yield path
    assert not path.exists(), f"code from a model file ran: {path} was written"


# --- 1. Code execution from a model file ------------------------------------------------------------------------

CODE_CASES = [
    ("pt2 pickled constant", lambda d, m: hm.pt2_pickled_constant(d, m), "pytorch", "SourceRefused",
     ["data/constants/", "holds more than tensors", "not loaded"]),
    ("pt2 pickled weight", lambda d, m: hm.pt2_pickled_weight(d, m), "pytorch", "SourceRefused",
     ["data/weights/", "holds more than tensors"]),
    ("pt2 sample inputs", lambda d, m: hm.pt2_sample_inputs(d, m), "pytorch", "SourceRefused",
     ["data/sample_inputs/model.pt", "holds more than tensors"]),
    ("pt2 custom object", lambda d, m: hm.pt2_custom_object(d, m), "pytorch", "SourceRefused",
     ["custom object", "unpickled as code"]),
    ("pt2 graph calls aten.save", lambda d, m: hm.pt2_file_op(d, m), "pytorch", "SourceRefused",
     ["aten::save", "read or write files"]),
    ("torchscript writes a file", lambda d, m: hm.torchscript(hm.WritesAFile(str(m)), d / "w.pt"), "torchscript",
     "SourceRefused", ["aten::save", "TorchScript code"]),
    ("torchscript reads a file", lambda d, m: hm.torchscript(hm.ReadsAFile("/proc/self/environ"), d / "r.pt"),
     "torchscript", "SourceRefused", ["aten::from_file"]),
    ("torchscript __setstate__", lambda d, m: hm.torchscript(hm.WritesOnLoad(str(m)), d / "s.pt"), "torchscript",
     "SourceRefused", ["aten::save"]),
    ("torchscript respaced code", lambda d, m: hm.torchscript_respaced(hm.WritesAFile(str(m)), d / "x.pt"),
     "torchscript", "SourceRefused", ["aten::save"]),
    ("keras lambda", lambda d, m: hm.keras_lambda(d / "l.keras", m), "keras", "SourceRefused",
     ["holds Python code"]),
    ("keras h5 lambda", lambda d, m: hm.keras_lambda(d / "l.h5", m), "keras", "SourceRefused",
     ["holds Python code"]),
]


@pytest.mark.parametrize(("case", "make", "fmt", "reason", "words"), CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_no_code_from_a_model_file(tmp_path: Path, marker: Path, case: str, make: Any, fmt: str, reason: str,
                                   words: list[str]) -> None:
    path = make(tmp_path, marker)
    refused(request(str(path), fmt, None if fmt == "keras" else SIG), tmp_path, reason, *words)


def test_a_state_dict_with_a_payload_is_not_unpickled(tmp_path: Path, marker: Path) -> None:
    """format pytorch with an allowed modelClass: the file must be a plain state_dict (weights-only load)."""
    path = tmp_path / "weights.pth"
    torch.save({"linear.weight": hm.Payload(marker)}, path)
    refused(request(str(path), "pytorch", SIG, {"modelClass": "hostile_models:Affine"},
                    Policy(allowed_modules=("hostile_models",))), tmp_path, "SourceRefused", "not a plain state_dict")


@pytest.mark.parametrize("make", [hm.pt2_pickled_constant, hm.pt2_sample_inputs,
                                  lambda d, m: hm.torchscript(hm.WritesOnLoad(str(m)), d / "s.pt")],
                         ids=["pt2 constant", "pt2 sample inputs", "torchscript __setstate__"])
def test_the_payloads_are_real_the_frameworks_own_loaders_run_them(tmp_path: Path, make: Any) -> None:
    """Control: torch's own loaders, in a process of their own, run each payload (so the refusals above stop a real
    attack, not a file that would have failed anyway)."""
    marker = tmp_path / "marker"
    path = make(tmp_path, marker)
    loader = "torch.export.load" if path.suffix == ".pt2" else "torch.jit.load"
    subprocess.run([sys.executable, "-c", f"import sys, torch\ntry:\n    {loader}(sys.argv[1])\nexcept Exception:\n"
                    "    pass", str(path)], timeout=300, capture_output=True, cwd=Path(__file__).parents[1])
    assert marker.exists(), f"{loader} did not run the payload: the case proves nothing"
    marker.unlink()


@pytest.mark.parametrize("what", ["write", "read"])
@pytest.mark.parametrize("target", ["onnx", "tensorflow-savedmodel"])
def test_a_savedmodel_that_reads_or_writes_files_is_refused(tmp_path: Path, marker: Path, what: str,
                                                            target: str) -> None:
    path = hm.saved_model(tmp_path / "sm", what, str(marker if what == "write" else "/proc/self/environ"))
    op = "WriteFile" if what == "write" else "ReadFile"
    refused(request(str(path), "tensorflow-savedmodel", None, {"target": target}), tmp_path, "SourceRefused", op,
            "read or write files")


def test_a_clean_savedmodel_passes_the_op_check(tmp_path: Path) -> None:
    path = hm.saved_model(tmp_path / "sm", "clean")
    manifest = convert(request(str(path), "tensorflow-savedmodel", None, {"target": "tensorflow-savedmodel"}),
                       tmp_path / "store")
    assert manifest["passedThrough"]


def test_a_samples_file_with_a_pickle_is_not_unpickled(tmp_path: Path, marker: Path) -> None:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    samples = hm.npz_with_pickle(tmp_path / "s.npz", marker)
    refused(request(str(model), "torchscript", SIG, {"samples": {"uri": str(samples)}}), tmp_path,
            "SourceUnreadable", "not an .npz of arrays")


def test_onnx_external_data_naming_the_environment_is_refused(tmp_path: Path) -> None:
    from convert_models import relocate, save_external

    graph = save_external(tmp_path / "m")
    relocate(graph, "/proc/self/environ")
    refused(request(str(graph), "onnx", None), tmp_path, "SourceRefused", "/proc/self/environ",
            "not a relative path inside the source")


MODULES = [
    ("conversion.modelClass", "os:system", "standard library"),
    ("conversion.modelClass", "builtins:exec", "standard library"),
    ("conversion.modelClass", "subprocess:Popen", "standard library"),
    ("conversion.modelClass", "signal:pause", "standard library"),
    ("conversion.modelClass", "torch.hub:load", "converter itself"),
    ("conversion.modelClass", "numpy:load", "converter itself"),
    ("conversion.modelClass", "modelyard.convert.main:main", "converter itself"),
    ("conversion.modelClass", "convert_models:CNN", "not in a module the operator's administrator allows"),
    ("conversion.modelClass", "modelyard_plugins_evil:Model", "not in a module the operator's administrator allows"),
    ("conversion.kerasCustomObjects", "builtins:eval", "standard library"),
    ("conversion.kerasCustomObjects", "keras_layers:Swish", "not in a module the operator's administrator allows"),
]


@pytest.mark.parametrize(("field", "name", "words"), MODULES, ids=[m[1] for m in MODULES])
def test_only_modules_the_administrator_allows_are_imported(tmp_path: Path, field: str, name: str,
                                                             words: str) -> None:
    before = set(sys.modules)
    spec = {"modelClass": name} if field == "conversion.modelClass" else {"kerasCustomObjects": [name]}
    fmt = "pytorch" if field == "conversion.modelClass" else "keras"
    refused(request(str(tmp_path / "never-read.pth"), fmt, SIG if fmt == "pytorch" else None, spec,
                    Policy(allowed_modules=("modelyard_plugins",))), tmp_path, "SourceRefused", field, name, words)
    module = name.split(":")[0]
    assert module in before or module not in sys.modules, f"{module} was imported"


# --- 2. Reading outside the source; 3. paths that climb -----------------------------------------------------------

@pytest.fixture(scope="module")
def clean_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return hm.saved_model(tmp_path_factory.mktemp("tf") / "sm", "clean")


@pytest.mark.parametrize(("link", "target", "words"), [
    ("leak", "/proc/self/environ", "points outside the source"), ("again", "..", "points at a directory"),
], ids=["link to the environment", "link loop"])
def test_a_savedmodel_with_a_link_out_or_a_loop_is_refused(clean_saved_model: Path, tmp_path: Path, link: str,
                                                           target: str, words: str) -> None:
    model = tmp_path / "sm"
    shutil.copytree(clean_saved_model, model)
    (model / "variables" / link).symlink_to(target)
    refused(request(str(model), "tensorflow-savedmodel", None, {"target": "tensorflow-savedmodel"}), tmp_path,
            "SourceRefused", f"'variables/{link}'", words)


@pytest.fixture
def claim(tmp_path: Path) -> Path:
    """A claim's mount, with a model and samples in it, and a secret beside it that no path may reach."""
    root = tmp_path / "claim"
    root.mkdir()
    hm.torchscript(hm.Affine(), root / "affine.pt")
    np.savez(root / "samples.npz", x=np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32))
    (tmp_path / "secret.npz").write_bytes((root / "samples.npz").read_bytes())
    return root


CLIMBS = [
    ("pvc path with ..", "pvc://claim/../secret.npz", {}, "not a relative path inside the source"),
    ("pvc path that is a link out", "pvc://claim/link.pt", {}, "resolves outside the source"),
    ("samples outside the mount", "pvc://claim/affine.pt", {"samples": {"uri": "SECRET"}},
     "resolves outside the source"),
    ("samples link out of the mount", "pvc://claim/affine.pt", {"samples": {"uri": "pvc://claim/link.npz"}},
     "resolves outside the source"),
    ("samples on another claim", "pvc://claim/affine.pt", {"samples": {"uri": "pvc://other/samples.npz"}},
     "only the source's claim is mounted"),
    ("samples with ..", "pvc://claim/affine.pt", {"samples": {"uri": "/mnt/source/../secret.npz"}},
     "resolves outside the source"),
]


@pytest.mark.parametrize(("case", "uri", "conversion", "words"), CLIMBS, ids=[c[0] for c in CLIMBS])
def test_nothing_outside_the_claim_is_read(claim: Path, tmp_path: Path, case: str, uri: str,
                                           conversion: dict[str, Any], words: str) -> None:
    (claim / "link.pt").symlink_to(tmp_path / "secret.npz")
    (claim / "link.npz").symlink_to(tmp_path / "secret.npz")
    if conversion.get("samples", {}).get("uri") == "SECRET":
        conversion = {"samples": {"uri": str(tmp_path / "secret.npz")}}
    confined = Policy(confine=True)
    refused(request(uri, "torchscript", SIG, conversion, confined), tmp_path, "SourceRefused", words,
            source_root=claim)


def test_samples_inside_the_claim_are_read(claim: Path, tmp_path: Path) -> None:
    manifest = convert(request("pvc://claim/affine.pt", "torchscript", SIG,
                               {"samples": {"uri": "pvc://claim/samples.npz"}}, Policy(confine=True)),
                       tmp_path / "store", source_root=claim)
    assert manifest["validation"]["samples"] == 16


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[boto3.client]:
    with moto_s3(tmp_path_factory.mktemp("moto")):
        client = boto3.client("s3")
        client.create_bucket(Bucket="models")
        yield client


@pytest.mark.parametrize("key", ["sm/../../escaped.txt", "sm/variables/../../../escaped.txt",
                                 "sm/..\\..\\escaped.txt", "sm//escaped.txt"])
def test_s3_keys_that_climb_are_refused_before_anything_is_written(s3: Any, tmp_path: Path, key: str) -> None:
    prefix = f"climb{abs(hash(key)) % 10**6}"
    s3.put_object(Bucket="models", Key=f"{prefix}/saved_model.pb", Body=b"")
    s3.put_object(Bucket="models", Key=key.replace("sm/", f"{prefix}/", 1), Body=b"overwritten")
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    refused(request(f"s3://models/{prefix}", "tensorflow-savedmodel", None, {"target": "tensorflow-savedmodel"}),
            tmp_path, "SourceRefused", "S3 object key", "not a relative path inside the source", workdir=work)
    written = [p for p in tmp_path.rglob("escaped.txt")]
    assert not written, f"an S3 key wrote outside the work directory: {written}"


# --- 4. Bounds ----------------------------------------------------------------------------------------------------

class _Server(http.server.BaseHTTPRequestHandler):
    """Loopback test server: /endless streams zeros for ever (until the client hangs up, at most 8 GiB), /big sends
    Content-Length 2 MiB, /hop/N redirects N more times, /scheme redirects to another scheme, /to/HOST:PORT
    redirects there."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            zeros = bytes(1 << 20)
            try:
                for _ in range(8 << 10):
                    self.wfile.write(zeros)
            except OSError:
                pass
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Length", str(2 << 20))
            self.end_headers()
            self.wfile.write(bytes(2 << 20))
        elif self.path.startswith("/hop/"):
            n = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/hop/{n - 1}" if n > 0 else "/big")
            self.end_headers()
        elif self.path == "/scheme":
            self.send_response(302)
            self.send_header("Location", f"https://127.0.0.1:{self.server.server_address[1]}/big")
            self.end_headers()
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", f"http://{self.path[4:]}/big")
            self.end_headers()
        else:
            self.send_error(404)


def server() -> contextlib.AbstractContextManager[str]:
    return serving(_Server)


HTTP_CASES = [
    ("over the limit (Content-Length)", "/big", {"maxSourceSize": "1Mi"}, LOOPBACK,
     ["larger than conversion.maxSourceSize (1.0 MiB)"]),
    ("redirects without end", "/hop/10", {}, LOOPBACK, ["redirects more than 3 times"]),
    ("redirect to another scheme", "/scheme", {}, LOOPBACK, ["redirects from http to https", "never changes"]),
    ("loopback not allowed", "/big", {}, Policy(), ["127.0.0.1, a loopback address", "allowedSourceCIDRs"]),
    ("redirect to an address not allowed", "/to/127.0.0.2:PORT", {}, Policy(allowed_cidrs=("127.0.0.1/32",)),
     ["127.0.0.2, a loopback address"]),
]


@pytest.mark.parametrize(("case", "path", "conversion", "policy", "words"), HTTP_CASES, ids=[c[0] for c in HTTP_CASES])
def test_http_sources_are_bounded(tmp_path: Path, case: str, path: str, conversion: dict[str, Any], policy: Policy,
                                  words: list[str]) -> None:
    with server() as base:
        path = path.replace("PORT", base.rsplit(":", 1)[1])
        refused(request(f"{base}{path}", "onnx", None, conversion, policy), tmp_path, "SourceRefused", *words)


@pytest.mark.parametrize(("address", "kind"), [
    ("169.254.169.254", "link-local"), ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
    ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("fe80::1", "link-local"), ("fd00::1", "private"),
    ("0.0.0.0", "reserved"), ("240.0.0.1", "reserved"), ("100.64.0.1", "private"),
])
def test_addresses_outside_the_internet_are_refused_unless_allowed(address: str, kind: str) -> None:
    """The check itself, on addresses that are never contacted (the fetch checks every resolved address before it
    connects, and the peer after)."""
    from modelyard.convert.errors import SourceRefused
    from modelyard.convert.sources import _check_address

    with pytest.raises(SourceRefused, match=kind):
        _check_address(address, [])
    _check_address(address, Policy(allowed_cidrs=(address,)).networks())  # allowed by the administrator
    _check_address("93.184.216.34", [])  # a public address: allowed (never contacted here)


def run_converter(tmp_path: Path, manifest: dict[str, Any], env: dict[str, str] | None = None,
                  args: list[str] | None = None, store: str | None = None) -> tuple[dict[str, Any], str, int]:
    """The converter as its container runs it, in a process of its own: (termination message, everything it
    printed, its peak RSS in MiB)."""
    request_file, term = tmp_path / "request.yaml", tmp_path / "termination-log"
    request_file.write_text(yaml.safe_dump(manifest))
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelyard.convert.main", "-f", str(request_file), "--store",
         store or str(tmp_path / "store"), "--termination-log", str(term), *(args or [])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=tmp_path)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return json.loads(term.read_text()), out, usage.ru_maxrss // 1024


def manifest(uri: str, fmt: str, signature: dict[str, Any] | None = SIG,
             conversion: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"apiVersion": "modelyard.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
            "spec": {"model": source(uri, fmt, signature), "serving": {"gpus": 0, "maxBatchSize": 8},
                     "conversion": conversion or {}}}


def test_an_endless_http_body_is_cut_at_the_limit(tmp_path: Path) -> None:
    with server() as base:
        result, _, rss = run_converter(tmp_path, manifest(f"{base}/endless", "onnx", None,
                                                            {"maxSourceSize": "256Mi"}),
                                         {"MODELYARD_CONVERTER_ALLOWED_CIDRS": "127.0.0.0/8"})
    print(f"endless HTTP body, maxSourceSize 256Mi: refused, converter peak RSS {rss} MiB (container limit 4096)")
    assert (result["ok"], result["reason"]) == (False, "SourceRefused"), result
    assert "larger than conversion.maxSourceSize (256.0 MiB)" in result["message"]
    assert not list((tmp_path / "store").glob("*")), "nothing is published"


def test_a_decompression_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    bomb = hm.npz_bomb(tmp_path / "bomb.npz", gib=3)
    print(f"samples bomb: {bomb.stat().st_size / (1 << 20):.1f} MiB on disk, 3 GiB unpacked")
    result, _, rss = run_converter(tmp_path, manifest(str(model), "torchscript", SIG, {"samples": {"uri": str(bomb)}}))
    print(f"decompression bomb: refused, converter peak RSS {rss} MiB (container limit 4096)")
    assert (result["ok"], result["reason"]) == (False, "SourceRefused"), result
    assert "unpacks to 3.0 GiB, more than conversion.maxSamplesSize (1.0 GiB)" in result["message"]


def test_an_array_header_that_declares_terabytes_is_refused(tmp_path: Path) -> None:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    samples = hm.npz_huge_header(tmp_path / "huge.npz")
    refused(request(str(model), "torchscript", SIG, {"samples": {"uri": str(samples)}}), tmp_path, "SourceRefused",
            "more than conversion.maxSamplesSize")


def test_declared_shapes_that_need_terabytes_of_samples_are_refused(tmp_path: Path) -> None:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    huge = {"inputs": [{"name": "x", "dataType": "FP32", "shape": [1000000, 1000000]}],
            "outputs": [{"name": "y", "dataType": "FP32", "shape": [3]}]}
    refused(request(str(model), "torchscript", huge), tmp_path, "ConversionUnsupported",
            "more than conversion.maxSamplesSize", "x [1000000, 1000000]")


def test_a_source_directory_over_the_limit_is_refused(clean_saved_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "sm"
    shutil.copytree(clean_saved_model, model)
    (model / "assets").mkdir(exist_ok=True)
    (model / "assets" / "padding.bin").write_bytes(bytes(2 << 20))
    refused(request(str(model), "tensorflow-savedmodel", None, {"target": "tensorflow-savedmodel",
                                                                 "maxSourceSize": "1Mi"}),
            tmp_path, "SourceRefused", "larger than conversion.maxSourceSize (1.0 MiB)")


# --- 5. Credentials never in a message ----------------------------------------------------------------------------

SENTINELS = {"password": "Sentinel-Password-7f3a", "secret": "Sentinel-Secret-Key-91c2",
             "token": "Sentinel-Session-Token-5d0e", "signature": "Sentinel-Signature-e44b"}


def _clean(*texts: str) -> None:
    for text in texts:
        for name, value in SENTINELS.items():
            assert value not in text, f"the {name} sentinel leaked: ...{text[max(0, text.find(value) - 200):][:400]}"


def test_credentials_never_reach_a_message(tmp_path: Path) -> None:
    """Each credential-bearing setting gets a sentinel, and each failure path it can drive runs the real
    converter process; its termination message, standard output and error (the pod's log) are grepped."""
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    closed = "127.0.0.1:9"  # discard port: nothing listens, the connection is refused at once
    creds = {"AWS_ACCESS_KEY_ID": "modelyard", "AWS_SECRET_ACCESS_KEY": SENTINELS["secret"],
             "AWS_SESSION_TOKEN": SENTINELS["token"], "AWS_DEFAULT_REGION": "us-east-1",
             "STORE_AWS_SECRET_ACCESS_KEY": SENTINELS["secret"], "STORE_AWS_ACCESS_KEY_ID": "modelyard",
             "MODELYARD_CONVERTER_ALLOWED_CIDRS": "127.0.0.0/8"}
    endpoint = f"http://user:{SENTINELS['password']}@{closed}"
    runs = [
        ("s3 source, AWS_ENDPOINT_URL with a password", manifest("s3://models/m.pt", "torchscript"),
         {**creds, "AWS_ENDPOINT_URL": endpoint}, None, [], "SourceUnavailable"),
        ("s3 store, endpoint with a password", manifest(str(model), "torchscript"), creds, "s3://store/converted",
         ["--store-endpoint", endpoint], "SourceUnavailable"),
        ("s3 store, STORE_AWS_ENDPOINT_URL with a password", manifest(str(model), "torchscript"),
         {**creds, "STORE_AWS_ENDPOINT_URL": endpoint}, "s3://store/converted", [], "SourceUnavailable"),
        ("http source with user:password@ and a presigned query", manifest(
            f"http://user:{SENTINELS['password']}@{closed}/m.onnx?X-Amz-Signature={SENTINELS['signature']}", "onnx",
            None), creds, None, [], "SourceRefused"),
        ("http source with a presigned query", manifest(
            f"http://{closed}/m.onnx?X-Amz-Signature={SENTINELS['signature']}&X-Amz-Security-Token="
            f"{SENTINELS['token']}", "onnx", None), creds, None, [], "SourceUnavailable"),
    ]
    for case, doc, env, store, args, reason in runs:
        result, out, _ = run_converter(tmp_path, doc, env, args, store)
        assert (result["ok"], result["reason"]) == (False, reason), (case, result)
        _clean(json.dumps(result), out)
        print(f"{case}: {result['reason']}: {result['message'][:160]}")


def test_the_redaction_covers_every_form(tmp_path: Path) -> None:
    from modelyard.redact import redact_text

    text = (f"cannot read http://u:{SENTINELS['password']}@minio:9000/x?sig={SENTINELS['signature']} and "
            f"s3://b/k?X-Amz-Security-Token={SENTINELS['token']}, https://{SENTINELS['password']}@h/p, "
            f"key {SENTINELS['secret']}")
    _clean(redact_text(text, [SENTINELS["secret"]]))
    assert "http://minio:9000/x?***" in redact_text(text)


# --- 6. Artifacts are verified before they serve ------------------------------------------------------------------

@pytest.fixture
def published(tmp_path: Path) -> tuple[Request, Path, dict[str, Any]]:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    req = request(str(model), "torchscript")
    manifest = convert(req, tmp_path / "store")
    return req, tmp_path / "store", manifest


def _tamper_artifact(repo: Path, manifest: dict[str, Any]) -> None:
    artifact = repo / manifest["artifact"]["path"]
    artifact.write_bytes(artifact.read_bytes()[:-16] + bytes(16))


def _plant_file(repo: Path, manifest: dict[str, Any]) -> None:
    (repo / "m" / "1" / "model.py").write_text("import os; os.system('id')  # planted")


def _rename_key(repo: Path, manifest: dict[str, Any]) -> None:
    stored = json.loads((repo / "manifest.json").read_text())
    (repo / "manifest.json").write_text(json.dumps({**stored, "key": "../../other-team"}))


def _forge_digests(repo: Path, manifest: dict[str, Any]) -> None:
    stored = json.loads((repo / "manifest.json").read_text())
    (repo / "manifest.json").write_text(json.dumps({k: v for k, v in stored.items() if k != "files"}))


@pytest.mark.parametrize(("tamper", "words"), [
    (_tamper_artifact, "m/1/model.onnx has sha256"), (_plant_file, "m/1/model.py is not in its manifest"),
    (_rename_key, "its manifest names key '../../other-team'"), (_forge_digests, "lists no file digests"),
], ids=["artifact bytes", "planted file", "manifest of another key", "manifest without digests"])
def test_a_stored_repository_that_does_not_match_its_manifest_is_converted_again(
        published: tuple[Request, Path, dict[str, Any]], tamper: Any, words: str) -> None:
    req, store, first = published
    repo = store / first["key"]
    tamper(repo, first)
    again = convert(req, store)
    assert not again["reused"] and "did not match its manifest" in again["replaced"] and words in again["replaced"]
    assert not (repo / "m" / "1" / "model.py").exists()
    third = convert(req, store)
    assert third["reused"] and third["files"] == first["files"], "the replaced repository is the converted one"


def test_a_key_planted_without_a_manifest_is_replaced(published: tuple[Request, Path, dict[str, Any]]) -> None:
    req, store, first = published
    repo = store / first["key"]
    shutil.rmtree(repo)
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "1" / "model.onnx").write_bytes(b"planted by someone who can write to the store")
    again = convert(req, store)
    assert not again["reused"]
    assert (repo / "m" / "1" / "model.onnx").read_bytes() != b"planted by someone who can write to the store"
    assert convert(req, store)["reused"]


def test_an_untouched_repository_is_reused_verified(published: tuple[Request, Path, dict[str, Any]]) -> None:
    req, store, first = published
    again = convert(req, store)
    assert again["reused"] and "replaced" not in again
    assert set(first["files"]) == {"m/config.pbtxt", "m/1/model.onnx"}
    assert first["converterVersion"] and "converterImage" in first


def test_an_s3_store_is_verified_too(s3: Any, tmp_path: Path) -> None:
    model = hm.torchscript(hm.Affine(), tmp_path / "affine.pt")
    s3.create_bucket(Bucket="store")
    req = request(str(model), "torchscript")
    first = convert(req, "s3://store/converted")
    key = f"converted/{first['key']}/m/1/model.onnx"
    s3.put_object(Bucket="store", Key=key, Body=b"planted")
    again = convert(req, "s3://store/converted")
    assert not again["reused"] and "m/1/model.onnx has sha256" in again["replaced"]
    assert s3.get_object(Bucket="store", Key=key)["Body"].read() != b"planted"
    assert convert(req, "s3://store/converted")["reused"]
