"""`make demo`, part 1: models of the demo's own, converted or staged, validated and served for real, then asked.

Builds a small CNN with torch (random weights, no downloads), saves it as TorchScript in a local store that a
hostPath PersistentVolume exposes as PVC `model-store`, applies examples/local/cnn-int8.yaml, follows its
conditions to Ready, and sends one inference to the pod address behind the model's Service (its EndpointSlice)
with tritonclient, printing the answer next to the source model's own. Then the same for a tiny Llama-style
language model (examples/local/tiny-llama.yaml, made here: random weights, a tokenizer trained on a paragraph),
served by Triton's vLLM backend, whose answer it streams piece by piece from generate_stream.

    python hack/demo_serve.py --kubectl KUBECTL --kubeconfig K --store DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import torch
import tritonclient.http as httpclient

from samplemodels import CNN, tiny_llama

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit's deprecation notice, not the demo's news
ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "examples" / "local" / "cnn-int8.yaml"
LLM_MANIFEST = ROOT / "examples" / "local" / "tiny-llama.yaml"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubectl", required=True)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--store", required=True, type=Path)
    parser.add_argument("--prometheus", help="the local Prometheus's URL: show what it scraped")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    def kubectl(*a: str, input: str | None = None) -> str:
        proc = subprocess.run([args.kubectl, f"--kubeconfig={args.kubeconfig}", *a], input=input, text=True,
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"kubectl {' '.join(a)}: {proc.stderr}")
        return proc.stdout

    torch.manual_seed(0)
    model = torch.jit.script(CNN().eval())
    (args.store / "sources").mkdir(parents=True, exist_ok=True)
    model.save(str(args.store / "sources" / "cnn.pt"))
    print(f"== built a small CNN with torch and saved it as TorchScript: {args.store / 'sources' / 'cnn.pt'}")

    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "demo-model-store"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "hostPath": {"path": str(args.store)},
                   "claimRef": {"namespace": "default", "name": "model-store"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "model-store",
                                                                               "namespace": "default"},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": "demo-model-store",
                    "resources": {"requests": {"storage": "1Gi"}}}}
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}))
    print(kubectl("apply", "-f", str(MANIFEST)).strip())
    tiny_llama(str(args.store / "sources" / "tiny-llama"))
    print(f"== made a tiny Llama-style checkpoint (random weights, a tokenizer trained here): "
          f"{args.store / 'sources' / 'tiny-llama'}")
    print(kubectl("apply", "-f", str(LLM_MANIFEST)).strip())  # staged and started while the CNN converts

    def follow(name: str) -> bool:
        """Print each new condition of `name` until it is Ready (True) or the time is up (False)."""
        seen: set[str] = set()
        deadline = time.monotonic() + args.timeout
        print(f"\n== {name}:")
        while True:
            body = json.loads(kubectl("get", "mdep", name, "-o", "json"))
            for cond in body.get("status", {}).get("conditions", []):
                line = f"   {cond['type']}={cond['status']} {cond['reason']}: {cond['message']}"
                if line not in seen:
                    seen.add(line)
                    print(line, flush=True)
            ready = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
            if ready and ready["status"] == "True":
                return True
            if time.monotonic() > deadline:
                print(f"{name} did not become Ready in time", file=sys.stderr)
                return False
            time.sleep(1)

    def endpoint(service: str) -> str:
        slices = json.loads(kubectl("get", "endpointslices", "-l", f"kubernetes.io/service-name={service}", "-o",
                                    "json"))["items"]
        return str(next(a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                        for a in e["addresses"]))

    if not follow("cnn-int8"):
        return 1
    address = endpoint("cnn-int8")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    client = httpclient.InferenceServerClient(f"{address}:8000")
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    served = client.infer("cnn-int8", [inp]).as_numpy("logits")[0]
    with torch.inference_mode():
        source = model(torch.from_numpy(x)).numpy()[0]
    print(f"\n== one inference over HTTP to {address}:8000 (the Service's endpoint), model cnn-int8 (ONNX int8):")
    print("   class   served (int8)   source (torch)")
    for i, (a, b) in enumerate(zip(served, source, strict=True)):
        print(f"   {i:>5}   {a:>13.4f}   {b:>14.4f}")
    print(f"   top-1: served {int(served.argmax())}, source {int(source.argmax())}; "
          f"max abs difference {float(np.abs(served - source).max()):.4f}")
    if args.prometheus:
        query = 'sum by (pod) (nv_inference_request_success{modeldeployment="cnn-int8"})'
        for _ in range(30):  # the next scrape, within seconds
            url = f"{args.prometheus}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
            with urllib.request.urlopen(url, timeout=10) as resp:
                result = json.loads(resp.read())["data"]["result"]
            if result and float(result[0]["value"][1]) >= 1:  # a scrape after the inference
                for r in result:
                    print(f"\n== Prometheus ({args.prometheus}): {query} -> pod {r['metric']['pod']}: {r['value'][1]}")
                break
            time.sleep(1)

    if not follow("tiny-llama"):
        return 1
    address = endpoint("tiny-llama")
    prompt = "Once upon a time there was"
    body = {"text_input": prompt, "parameters": {"stream": True, "temperature": 0, "max_tokens": 24}}
    print(f"\n== generate_stream to {address}:8000, model tiny-llama (vLLM's CPU engine behind Triton's vllm "
          "backend), greedy; random weights, so the words are noise, streamed piece by piece:")
    request = urllib.request.Request(f"http://{address}:8000/v2/models/tiny-llama/generate_stream",
                                     json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    pieces = 0
    print(f"   {prompt}", end="", flush=True)
    with urllib.request.urlopen(request, timeout=120) as response:
        for line in response:
            if line.startswith(b"data: "):
                pieces += 1
                print(json.loads(line[6:])["text_output"], end="|", flush=True)
    print(f"\n   ({pieces} pieces, '|' between them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
