"""Pod spec -> process plan: what to run for one container, with which environment and which mounts.

Pure: everything it needs (volume directories, Secret and ConfigMap data, the pod IP) is resolved by the kubelet
loop and passed in, so the plans are golden-tested without a cluster. A container that cannot be planned raises
PlanError with the reason a real kubelet would report (ErrImagePull, CreateContainerConfigError).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from processkubelet.images import TRITON_KINDS, LocalImage, local_key

Obj = dict[str, Any]
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
LOCAL_REPOSITORY = "/var/run/modelyard-local/model-repository"
"""Where a Triton container sees the python-backend shadow of its model repository."""


class PlanError(Exception):
    """The container cannot start; `reason` is the waiting reason a kubelet would show."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Mount:
    source: str
    """Host path (directory or file)."""
    target: str
    """Path inside the container."""
    read_only: bool = False


@dataclass(frozen=True)
class Probe:
    kind: str
    """startup | readiness | liveness"""
    action: str
    """http | tcp | exec"""
    host: str = ""
    port: int = 0
    path: str = "/"
    scheme: str = "HTTP"
    command: tuple[str, ...] = ()
    initial_delay: float = 0
    period: float = 10
    timeout: float = 1
    success_threshold: int = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class LocalRuntime:
    """Host facts the plans need: where the kubelet keeps things and what Triton needs to run on this machine."""

    base_path: str
    """PATH of the processes (the image's PATH has no meaning here)."""
    image_paths: tuple[str, ...] = ()
    """Host paths that are the local images' contents (the checkout, the venv, Triton's backends): bound read-only
    at their own paths over the pod's volumes, so that a volume at /tmp cannot hide a checkout under /tmp."""
    triton_backends: str = ""
    triton_env: Mapping[str, str] = field(default_factory=dict)
    vllm_env: Mapping[str, str] | None = None
    """Triton's vLLM image: triton_env with the engine's venv (tritonlocal.vllm_env); None where it is not built."""
    vllm_missing: str = ""
    """Why vllm_env is None, for the pod's status."""


@dataclass(frozen=True)
class PodContext:
    pod_ip: str
    host_ip: str
    pod_dir: str
    volumes: Mapping[str, str]
    """Volume name -> host directory (PVC through its PV, emptyDir, Secret/ConfigMap files), made by the kubelet."""
    env_sources: Mapping[tuple[str, str], Mapping[str, str] | None]
    """("secret" | "configmap", name) -> its data (decoded), None where the object does not exist."""
    netns: str = ""
    """The pod's network namespace (network.py); empty: the host's network."""


@dataclass(frozen=True)
class ProcessPlan:
    container: str
    image_kind: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    mounts: tuple[Mount, ...]
    read_only_root: bool
    termination_path: str
    termination_policy: str
    termination_file: str
    log_file: str
    rootfs: str
    probes: tuple[Probe, ...]
    netns: str = ""


# --- environment -------------------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, $$ escapes, undefined ones stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)

    return _VAR.sub(sub, value)


def _source(ctx: PodContext, kind: str, name: str, optional: bool) -> Mapping[str, str] | None:
    data = ctx.env_sources.get((kind, name))
    if data is None and not optional:
        label = "secret" if kind == "secret" else "configmap"
        raise PlanError("CreateContainerConfigError", f'{label} "{name}" not found')
    return data


def _field(pod: Obj, ctx: PodContext, path: str) -> str:
    meta = pod["metadata"]
    values = {
        "metadata.name": meta["name"], "metadata.namespace": meta["namespace"], "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""), "spec.serviceAccountName":
            pod["spec"].get("serviceAccountName", ""), "status.podIP": ctx.pod_ip, "status.hostIP": ctx.host_ip,
    }
    if path in values:
        return str(values[path])
    m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if m:
        return str(meta.get(m.group(1), {}).get(m.group(2), ""))
    raise PlanError("CreateContainerConfigError", f"fieldRef {path} is not supported by the process kubelet")


def container_env(pod: Obj, container: Obj, ctx: PodContext, base: Mapping[str, str]) -> dict[str, str]:
    env = dict(base)
    for item in container.get("envFrom", []):
        prefix = item.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            if key in item:
                ref = item[key]
                data = _source(ctx, kind, ref["name"], bool(ref.get("optional")))
                for k, v in (data or {}).items():
                    env[prefix + k] = v
    for var in container.get("env", []):
        name = var["name"]
        if "value" in var:
            env[name] = expand(var["value"], env)
            continue
        src = var.get("valueFrom", {})
        if "fieldRef" in src:
            env[name] = _field(pod, ctx, src["fieldRef"]["fieldPath"])
            continue
        for kind, key, label in (("secret", "secretKeyRef", "Secret"), ("configmap", "configMapKeyRef", "ConfigMap")):
            if key in src:
                ref = src[key]
                data = _source(ctx, kind, ref["name"], bool(ref.get("optional")))
                if data is not None and ref["key"] in data:
                    env[name] = data[ref["key"]]
                elif not ref.get("optional"):
                    ns = pod["metadata"]["namespace"]
                    raise PlanError("CreateContainerConfigError",
                                    f"couldn't find key {ref['key']} in {label} {ns}/{ref['name']}")
                break
        else:
            if name not in env:
                raise PlanError("CreateContainerConfigError", f"env {name}: this valueFrom is not supported here")
    return env


# --- probes --------------------------------------------------------------------------------------------------------

def _port(container: Obj, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise PlanError("CreateContainerConfigError", f"probe port {port!r} is not a port of container "
                    f"{container['name']}")


def probes(container: Obj, pod_ip: str) -> tuple[Probe, ...]:
    out = []
    for kind in ("startup", "readiness", "liveness"):
        spec = container.get(f"{kind}Probe")
        if not spec:
            continue
        timing = {
            "initial_delay": float(spec.get("initialDelaySeconds", 0)),
            "period": float(spec.get("periodSeconds", 10)),
            "timeout": float(spec.get("timeoutSeconds", 1)),
            "success_threshold": int(spec.get("successThreshold", 1)),
            "failure_threshold": int(spec.get("failureThreshold", 3)),
        }
        if "httpGet" in spec:
            h = spec["httpGet"]
            out.append(Probe(kind, "http", host=h.get("host") or pod_ip, port=_port(container, h["port"]),
                             path=h.get("path", "/"), scheme=h.get("scheme", "HTTP"), **timing))  # type: ignore[arg-type]
        elif "tcpSocket" in spec:
            t = spec["tcpSocket"]
            out.append(Probe(kind, "tcp", host=t.get("host") or pod_ip, port=_port(container, t["port"]),
                             **timing))  # type: ignore[arg-type]
        elif "exec" in spec:
            out.append(Probe(kind, "exec", command=tuple(spec["exec"]["command"]), **timing))  # type: ignore[arg-type]
        else:
            raise PlanError("CreateContainerConfigError", f"{kind}Probe: only httpGet, tcpSocket and exec are "
                            "supported by the process kubelet")
    return tuple(out)


# --- the plan --------------------------------------------------------------------------------------------------------

def _mounts(container: Obj, ctx: PodContext, runtime: LocalRuntime) -> tuple[Mount, ...]:
    out = []
    for m in container.get("volumeMounts", []):
        if m["name"] not in ctx.volumes:
            raise PlanError("CreateContainerConfigError", f"volume {m['name']!r} is not available")
        source = ctx.volumes[m["name"]]
        if m.get("subPath"):
            source = f"{source.rstrip('/')}/{m['subPath']}"
        out.append(Mount(source, m["mountPath"], bool(m.get("readOnly"))))
    volumes = sorted(out, key=lambda mt: mt.target.count("/"))
    return (*volumes, *(Mount(p, p, True) for p in runtime.image_paths))


def plan_container(pod: Obj, container: Obj, ctx: PodContext, images: Mapping[str, LocalImage],
                   runtime: LocalRuntime) -> ProcessPlan:
    """The process that stands for `container` of `pod`."""
    name = container["name"]
    image = images.get(local_key(container.get("image", "")))
    if image is None:
        raise PlanError("ErrImagePull", f"image {container.get('image')!r} has no local program: the process "
                        "kubelet runs only the images in its table (hack/processkubelet/images.py)")
    base = {"PATH": runtime.base_path, "HOSTNAME": pod["metadata"]["name"]}
    if image.kind == "triton-vllm":
        if runtime.vllm_env is None:
            raise PlanError("RunContainerError", f"container {name}: image {container.get('image')} runs Triton's "
                            f"vLLM backend, whose local engine is not installed: {runtime.vllm_missing}")
        base.update(runtime.vllm_env)  # triton_env made for the engine: without its PYTHONPATH (tritonlocal.vllm_env)
    elif image.kind in TRITON_KINDS:
        base.update(runtime.triton_env)
    env = container_env(pod, container, ctx, base)
    command = [expand(c, env) for c in container.get("command", [])] or list(image.entrypoint)
    args = [expand(a, env) for a in container.get("args", [])]
    if not command:
        raise PlanError("RunContainerError", f"container {name}: no command, and image {image.repository} has "
                        "no entrypoint in the local table")
    if not command[0].startswith("/"):
        if command[0] not in image.commands:
            raise PlanError("RunContainerError", f"container {name}: {command[0]!r} is not a program of image "
                            f"{image.repository} in the local table")
        command[0] = image.commands[command[0]]
    argv = command + args
    if image.kind in TRITON_KINDS:
        argv += [f"--backend-directory={runtime.triton_backends}", f"--http-address={ctx.pod_ip}",
                 f"--grpc-address={ctx.pod_ip}", f"--metrics-address={ctx.pod_ip}"]
    security = container.get("securityContext", {})
    pod_dir = ctx.pod_dir.rstrip("/")
    return ProcessPlan(
        container=name,
        image_kind=image.kind,
        argv=tuple(argv),
        env=dict(sorted(env.items())),
        cwd=container.get("workingDir") or "/",
        mounts=_mounts(container, ctx, runtime),
        read_only_root=bool(security.get("readOnlyRootFilesystem")),
        termination_path=container.get("terminationMessagePath") or DEFAULT_TERMINATION_PATH,
        termination_policy=container.get("terminationMessagePolicy") or "File",
        termination_file=f"{pod_dir}/termination/{name}",
        log_file=f"{pod_dir}/logs/{name}.log",
        rootfs=f"{pod_dir}/rootfs/{name}",
        probes=probes(container, ctx.pod_ip),
        netns=ctx.netns,
    )


# --- Triton's model repository -----------------------------------------------------------------------------------

def model_repository_arg(plan: ProcessPlan) -> str | None:
    """The --model-repository path a Triton container was given (as the container sees it)."""
    for arg in plan.argv:
        if arg.startswith("--model-repository="):
            return arg.split("=", 1)[1]
    return None


def host_path(plan: ProcessPlan, path: str) -> str | None:
    """Where a container path lives on the host, through the deepest volume mount that holds it."""
    for mount in sorted(plan.mounts, key=lambda m: len(m.target), reverse=True):
        if mount.source == mount.target:  # the image's own files, not a volume
            continue
        target = mount.target.rstrip("/") or "/"
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return mount.source.rstrip("/") + path[len(target.rstrip("/")):]
    return None


def with_local_repository(plan: ProcessPlan, shadow: str) -> ProcessPlan:
    """Serve the python-backend shadow at LOCAL_REPOSITORY instead of the repository the pod names."""
    argv = tuple(f"--model-repository={LOCAL_REPOSITORY}" if a.startswith("--model-repository=") else a
                 for a in plan.argv)
    return replace(plan, argv=argv, mounts=(*plan.mounts, Mount(shadow, LOCAL_REPOSITORY, True)))
