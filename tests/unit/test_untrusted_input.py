"""The operator's side of untrusted input, as pure functions: which code a spec may name, what a converter's
termination message may say, and the one redaction (docs/security.md)."""

from __future__ import annotations

import json

import pytest

from modelyard.api.conditions import Reason
from modelyard.api.v1alpha1.common import byte_size
from modelyard.codepolicy import module_refusal
from modelyard.redact import redact_text, redact_url
from modelyard.status.conversion import observe_conversion

ALLOWED = ("modelyard_plugins", "acme.models")


@pytest.mark.parametrize(("name", "words"), [
    ("os:system", "standard library"), ("builtins:exec", "standard library"), ("subprocess:Popen", "standard library"),
    ("signal:pause", "standard library"), ("importlib:import_module", "standard library"),
    ("torch.hub:load", "converter itself"), ("numpy:load", "converter itself"), ("keras.saving:load_model",
                                                                                  "converter itself"),
    ("modelyard.convert.main:main", "converter itself"), ("_thread:start_new_thread", "standard library"),
    ("modelyard_plugins:__import__", "standard library"), ("acme:Model", "not in a module"),
    ("acme.modelsx:Model", "not in a module"), ("modelyard_plugins_evil:Model", "not in a module"),
])
def test_code_a_spec_may_not_name(name: str, words: str) -> None:
    refusal = module_refusal("conversion.modelClass", name, ALLOWED)
    assert refusal is not None and words in refusal and name in refusal


@pytest.mark.parametrize("name", ["modelyard_plugins:Model", "modelyard_plugins.vision:ResNet", "acme.models:Bert",
                                  "acme.models.text.bert:build"])
def test_code_the_administrator_allows(name: str) -> None:
    assert module_refusal("conversion.modelClass", name, ALLOWED) is None


def _job_with_result(result: dict[str, object] | str) -> tuple[dict[str, object], list[dict[str, object]]]:
    message = result if isinstance(result, str) else json.dumps(result)
    job = {"metadata": {"name": "m-abc-convert"}, "status": {}}
    pod = {"status": {"containerStatuses": [{"name": "converter", "state": {"terminated": {
        "exitCode": 0, "finishedAt": "2026-12-06T00:00:00Z", "message": message}}}]}}
    return job, [pod]


@pytest.mark.parametrize("key", ["../../other-team", "0123456789abcdef012", "0123456789ABCDEF0123", "", "a" * 64,
                                 "0123456789abcdef0123/../x"])
def test_a_result_naming_a_key_the_converter_cannot_make_is_not_served(key: str) -> None:
    state = observe_conversion(*_job_with_result({"ok": True, "key": key, "artifact": {}, "validation": {}}))
    assert (state.done, state.failed, state.reason) == (False, True, Reason.CONVERSION_FAILED)
    assert "not a key the converter makes" in state.message and state.key is None


def test_a_well_formed_key_is_served() -> None:
    state = observe_conversion(*_job_with_result({"ok": True, "key": "0123456789abcdef0123", "artifact": {},
                                                  "validation": {}}))
    assert state.done and state.key == "0123456789abcdef0123"


def test_a_termination_message_is_redacted_before_it_reaches_status() -> None:
    leaked = "cannot read http://u:hunter2@minio:9000/b/k?X-Amz-Signature=deadbeef"
    state = observe_conversion(*_job_with_result({"ok": False, "reason": "SourceUnavailable", "message": leaked}))
    assert state.reason == Reason.SOURCE_UNAVAILABLE
    assert "hunter2" not in state.message and "deadbeef" not in state.message
    assert "http://minio:9000/b/k?***" in state.message
    ok = observe_conversion(*_job_with_result({"ok": True, "key": "0123456789abcdef0123", "artifact": {
        "path": "http://u:hunter2@x/y"}, "validation": {}, "replaced": f"stored copy differed ({leaked})"}))
    assert "hunter2" not in json.dumps(ok.result)


def test_a_crash_log_in_the_termination_message_is_redacted() -> None:
    job, pods = _job_with_result("Traceback ... botocore: http://AKIA:hunter2@s3.local/bucket")
    job["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
    state = observe_conversion(job, pods)
    assert state.failed and "hunter2" not in state.message and "http://s3.local/bucket" in state.message


@pytest.mark.parametrize(("url", "shown"), [
    ("https://user:pw@host/p?q=1#f", "https://host/p?***"), ("s3://b/k", "s3://b/k"), ("pvc://c/p", "pvc://c/p"),
    ("http://:p@w@host:9000/x", "http://host:9000/x"), ("/local/path", "/local/path"),
    ("http://host/p?***", "http://host/p?***"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_blanks_known_secrets_and_every_url() -> None:
    text = 'endpoint "http://k:s3cr3t@minio:9000" said AccessDenied for key wJalrXUtnFEMI, s3://b/x?Signature=zz'
    out = redact_text(text, ["wJalrXUtnFEMI"])
    assert "s3cr3t" not in out and "wJalrXUtnFEMI" not in out and "zz" not in out
    assert '"http://minio:9000"' in out


@pytest.mark.parametrize(("text", "size"), [("1", 1), ("512Mi", 512 << 20), ("20Gi", 20 << 30), ("1Ti", 1 << 40),
                                            ("4096Ki", 4 << 20)])
def test_byte_size(text: str, size: int) -> None:
    assert byte_size(text) == size


def test_no_pod_the_operator_creates_gets_a_service_account_token() -> None:
    """Converter and Triton pods run code near untrusted model files: neither gets an API token to use."""
    from pathlib import Path

    import yaml

    from modelyard.cli import render_manifest

    examples = sorted(Path(__file__).resolve().parents[2].glob("examples/**/*.yaml"))
    pods = [child for path in examples for doc in yaml.safe_load_all(path.read_text())
            if doc and doc.get("kind") == "ModelDeployment" for child in render_manifest(doc)
            if child["kind"] in ("Job", "Deployment")]
    assert {p["kind"] for p in pods} == {"Job", "Deployment"}
    for pod in pods:
        spec = pod["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, pod["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, pod["metadata"]["name"]


def test_a_source_secret_reaches_the_converter_only_where_its_scheme_reads_it() -> None:
    """Admission refuses credentialsSecretRef beside anything but s3:// now; an object admitted before still never
    hands its Secret to the converter of an http(s) source."""
    from modelyard.cli import render_manifest

    doc = {"apiVersion": "modelyard.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
           "spec": {"model": {"uri": "https://models.example.com/m.onnx", "format": "onnx",
                              "credentialsSecretRef": {"name": "team-secrets"}},
                    "serving": {"gpus": 0}, "conversion": {"store": "pvc://store/converted"}}}
    job = render_manifest(doc)[0]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert job["kind"] == "Job" and "team-secrets" not in json.dumps(container.get("envFrom", []))
    doc["spec"]["model"]["uri"] = "s3://models/m.onnx"
    job = render_manifest(doc)[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "team-secrets"}}]


def test_messages_carry_no_terminal_escape_codes() -> None:
    """torch's errors come with bold advice (ESC[1m): a condition shows the words alone."""
    text = "Weights only load failed. \x1b[1mdo those steps only if you trust the source\x1b[0m.\x07\nnext line\tok"
    assert redact_text(text) == "Weights only load failed. do those steps only if you trust the source.\nnext line\tok"
    state = observe_conversion(*_job_with_result({"ok": False, "reason": "ConversionFailed",
                                                  "message": "export failed: \x1b[31mred\x1b[0m"}))
    assert state.message == "export failed: red"


@pytest.mark.parametrize(("config", "foreign"), [
    # Keras's own serialization markers name no class: a functional model's tensor references and values.
    ({"class_name": "__keras_tensor__", "config": {"shape": [None, 8]}}, set()),
    ({"class_name": "Functional", "config": {"layers": []}}, set()),
    ({"class_name": "__numpy__", "config": {"value": [1]}}, set()),
    # Classes from elsewhere are foreign, however they hide: a module, a registered name, a name Keras lacks.
    ({"module": "evil.layers", "class_name": "Boom", "config": {}}, {("evil.layers", "Boom")}),
    ({"class_name": "evil>Boom", "config": {}}, {("evil", "Boom")}),
    ({"class_name": "Boom", "config": {}}, {("", "Boom")}),
    ({"layers": [{"class_name": "__keras_tensor__", "config": {}}, {"class_name": "Boom", "config": {}}]},
     {("", "Boom")}),
])
def test_keras_configs_name_their_foreign_classes_and_only_those(config: dict, foreign: set) -> None:
    from modelyard.convert.models import keras_foreign_classes

    assert keras_foreign_classes(config, lambda name: name in ("Dense", "Sequential")) == foreign
