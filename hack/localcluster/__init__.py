"""A real local Kubernetes control plane, no Docker: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kwok (fake nodes whose pods become Running, for scale) and the process kubelet (a node whose pods run as real
local processes: hack/processkubelet), on loopback with free ports and generated certificates.

Binaries come from $KUBEBUILDER_ASSETS or PATH when all are there, otherwise from hack/control-plane/build.sh,
which builds pinned versions from the Go module proxy into ~/.cache/modelyard/. A part that cannot be had is an
error that names it: nothing here skips.

    cluster = LocalCluster(workdir).start(); ...; cluster.stop()
    python -m localcluster up --dir DIR      # for `make demo`: prints the kubeconfig path, runs until killed
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "hack" / "control-plane" / "build.sh"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")

ADMIN_USER = "admin"
OPERATOR_USER = "modelyard-operator"
PROMETHEUS_USER = "modelyard-prometheus"
SCRAPE_CONFIG = ROOT / "docs" / "monitoring" / "scrape-config.yaml"
PROMETHEUS_BUILD = ROOT / "hack" / "prometheus" / "build.sh"
TRAEFIK_BUILD = ROOT / "hack" / "traefik" / "build.sh"
KEDA_BUILD = ROOT / "hack" / "keda" / "build.sh"
GITOPS_BUILD = ROOT / "hack" / "gitops" / "build.sh"
HELM_BUILD = ROOT / "hack" / "helm" / "build.sh"
KEDA_NAMESPACE = "keda"
FRONT_PROXY_USER = "front-proxy-client"
"""The API server's identity when it proxies to an aggregated API (KEDA's external metrics)."""
GATEWAY_NAMESPACE = "gateway-system"
GATEWAY_NAME = "local"
"""The local cluster's one Gateway (class traefik): HTTPRoutes from every namespace may attach to it."""
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


RBAC_RULES = ROOT / "charts" / "modelyard" / "files" / "clusterrole-rules.yaml"
LEADER_ELECTION_RULES = ROOT / "charts" / "modelyard" / "files" / "leader-election-rules.yaml"
OPERATOR_NAMESPACE = "modelyard-system"
"""The operator's own namespace on the local cluster: its leader election Lease lives there."""


def prometheus_rbac() -> list[dict[str, Any]]:
    """What Prometheus's pod discovery needs: get, list and watch pods."""
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PROMETHEUS_USER}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": PROMETHEUS_USER},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": PROMETHEUS_USER}, "roleRef": role,
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROMETHEUS_USER}]},
    ]


def _built(script: Path, override: str, marker: str) -> Path:
    """The directory a hack/*/build.sh prints (building once, then cached), or $override when set."""
    given = os.environ.get(override)
    if given:
        return Path(given)
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=False)
    path = Path(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else Path("/nonexistent")
    if proc.returncode != 0 or not (path / marker).is_file():
        raise ControlPlaneMissing(f"{script} failed:\n{proc.stderr[-3000:]}")
    return path


def find_traefik() -> Path:
    """The directory with Traefik and the Gateway API CRDs it speaks (hack/traefik/build.sh; cached)."""
    return _built(TRAEFIK_BUILD, "MODELYARD_TRAEFIK_DIR", "traefik")


def find_keda() -> Path:
    """The directory with keda-operator, keda-adapter and KEDA's CRDs (hack/keda/build.sh; cached)."""
    return _built(KEDA_BUILD, "MODELYARD_KEDA_DIR", "keda-operator")


def find_gitops_check() -> Path:
    """gitops-check: the kstatus library (Flux) and gopher-lua as Argo CD runs health.lua (hack/gitops/build.sh)."""
    return _built(GITOPS_BUILD, "MODELYARD_GITOPS_DIR", "gitops-check") / "gitops-check"


def find_helm() -> Path:
    """helm, built from the Go module proxy (hack/helm/build.sh; cached), or $MODELYARD_HELM_DIR's."""
    return _built(HELM_BUILD, "MODELYARD_HELM_DIR", "helm") / "helm"


def find_prometheus() -> str:
    """Prometheus with Kubernetes service discovery: $MODELYARD_PROMETHEUS, else hack/prometheus/build.sh's (built
    from the Go module proxy once, then cached). Not one from PATH: Debian's is built without kubernetes_sd."""
    given = os.environ.get("MODELYARD_PROMETHEUS")
    if given:
        return given
    proc = subprocess.run(["bash", str(PROMETHEUS_BUILD)], capture_output=True, text=True, check=False)
    path = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    if proc.returncode != 0 or not Path(path).is_file():
        raise ControlPlaneMissing(f"{PROMETHEUS_BUILD} failed:\n{proc.stderr[-3000:]}")
    return path


def operator_rbac() -> list[dict[str, Any]]:
    """The chart's ClusterRole bound to user modelyard-operator: the operator runs with only what the chart grants."""
    rules = yaml.safe_load(RBAC_RULES.read_text())
    role = {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "modelyard-operator"}
    user = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": OPERATOR_USER}]
    lease = {"name": "modelyard-operator-leader-election", "namespace": OPERATOR_NAMESPACE}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "modelyard-operator"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "modelyard-operator"}, "roleRef": role, "subjects": user},
        # The chart's Role for the leader election's Lease, in the operator's namespace.
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": lease,
         "rules": yaml.safe_load(LEADER_ELECTION_RULES.read_text())},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": lease,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": lease["name"]},
         "subjects": user},
    ]


class ControlPlaneMissing(RuntimeError):
    """A control-plane part could not be found or built."""


def find_binaries() -> Path:
    """The directory holding every control-plane binary, building them when none is found."""
    for candidate in (os.environ.get("KUBEBUILDER_ASSETS"), os.environ.get("MODELYARD_CONTROL_PLANE_BIN")):
        if candidate and all((Path(candidate) / b).is_file() for b in CONTROL_PLANE):
            return Path(candidate)
    on_path = [shutil.which(b) for b in CONTROL_PLANE]
    if all(on_path) and len({Path(p).parent for p in on_path if p}) == 1:
        return Path(on_path[0]).parent  # type: ignore[arg-type]
    if shutil.which("go") is None:
        raise ControlPlaneMissing(
            f"control plane binaries {', '.join(CONTROL_PLANE)} were not found (KUBEBUILDER_ASSETS, PATH) and "
            "'go' is not installed to build them"
        )
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneMissing(f"{BUILD_SCRIPT} failed:\n{proc.stderr[-4000:]}")
    path = Path(proc.stdout.strip().splitlines()[-1])
    missing = [b for b in CONTROL_PLANE if not (path / b).is_file()]
    if missing:
        raise ControlPlaneMissing(f"{BUILD_SCRIPT} did not produce {missing} in {path}")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- certificates ----------------------------------------------------------------------------------------------


@dataclass
class _Pki:
    dir: Path
    ca_key: rsa.RSAPrivateKey = field(init=False)
    ca_cert: x509.Certificate = field(init=False)

    def __post_init__(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelyard-local-ca")])
        self.ca_cert = (
            self._builder(name, self.ca_key.public_key())
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self._write("ca", self.ca_key, self.ca_cert)

    @staticmethod
    def _builder(subject: x509.Name, key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=7))
        )

    def _write(self, stem: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> None:
        (self.dir / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (self.dir / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, cn: str, orgs: Iterable[str] = (), server: bool = False, client: bool = False,
              dns_names: Iterable[str] = ()) -> None:
        """A certificate signed by the CA: a client one, or a server one for localhost (`client` too: both, as
        KEDA's mutual-TLS gRPC between its adapter and operator wants one pair for each end)."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        subject = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
            + [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        )
        eku = x509.oid.ExtendedKeyUsageOID
        usages = [eku.SERVER_AUTH, eku.CLIENT_AUTH] if server and client else [
            eku.SERVER_AUTH if server else eku.CLIENT_AUTH]
        builder = (
            self._builder(subject, key.public_key())
            .issuer_name(self.ca_cert.subject)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        *(x509.DNSName(n) for n in dns_names),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("198.19.240.1")),
                    ]
                ),
                critical=False,
            )
        self._write(stem, key, builder.sign(self.ca_key, hashes.SHA256()))

    @staticmethod
    def reissue_into(pki: Path, out: Path) -> None:
        """ca.crt, tls.crt and tls.key in `out`, as KEDA reads its certificate directory: the local CA, and a
        server-and-client pair for localhost signed by it."""
        shutil.copy(pki / "ca.crt", out / "ca.crt")
        shutil.copy(pki / "keda.crt", out / "tls.crt")
        shutil.copy(pki / "keda.key", out / "tls.key")

    def service_account_keys(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.dir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (self.dir / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata"}],
}

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


# --- the cluster -----------------------------------------------------------------------------------------------


@dataclass
class LocalCluster:
    """One local control plane. `start()` returns when the API server is ready and the fake nodes are Ready."""

    workdir: Path
    gpu_nodes: int = 2
    gpus_per_node: int = 2
    cpu_nodes: int = 1
    process_nodes: int = 1
    """Nodes run by the process kubelet (proc-node-<i>, tainted modelyard.dev/kubelet=process:NoSchedule)."""
    process_backoff: float = 10.0
    """The process kubelet's CrashLoopBackOff base delay."""
    with_gateway: bool = True
    """Traefik as the Gateway API implementation, with Gateway gateway-system/local listening on gateway_port."""
    gateway_port: int = 0
    traefik_metrics_port: int = 0
    with_prometheus: bool = True
    """Prometheus (hack/prometheus/build.sh) scraping the Triton pods with docs/monitoring/scrape-config.yaml."""
    prometheus_port: int = 0
    with_keda: bool = True
    """KEDA (hack/keda/build.sh): its operator, and its metrics adapter as the external metrics API."""
    hpa_sync_period: str = "5s"
    """kube-controller-manager's --horizontal-pod-autoscaler-sync-period (15s by default in a real cluster): the
    tests measure reactions in these periods, and a shorter one keeps them short."""
    with_controllers: bool = True
    binaries: Path | None = None
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _commands: dict[str, tuple[list[str], dict[str, str] | None]] = field(default_factory=dict)

    # paths
    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters), for tests, kubectl and the controllers."""
        return self.workdir / "admin.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        """The operator's own identity (user modelyard-operator, no groups): only what RBAC grants it."""
        return self.workdir / "operator.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def gateway_url(self) -> str:
        """Traefik's entrypoint for the Gateway's listener: send requests here with the route's Host header."""
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def bin(self, name: str) -> str:
        assert self.binaries is not None
        return str(self.binaries / name)

    # lifecycle
    def start(self) -> LocalCluster:
        self.binaries = self.binaries or find_binaries()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        pki = _Pki(self.pki)
        pki.issue("apiserver", "kube-apiserver", server=True)
        pki.issue(ADMIN_USER, ADMIN_USER, orgs=["system:masters"])
        pki.issue(OPERATOR_USER, OPERATOR_USER)
        pki.issue(PROMETHEUS_USER, PROMETHEUS_USER)
        pki.issue(FRONT_PROXY_USER, FRONT_PROXY_USER)
        # The aggregator checks the name <service>.<namespace>.svc of the APIService's Service.
        pki.issue("keda", "keda", server=True, client=True, dns_names=[f"keda-metrics-apiserver.{KEDA_NAMESPACE}.svc"])
        pki.service_account_keys()
        self.port = self.port or free_port()
        self._write_kubeconfig(self.kubeconfig, ADMIN_USER)
        self._write_kubeconfig(self.operator_kubeconfig, OPERATOR_USER)
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))

        etcd_port, peer_port = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                self.bin("etcd"),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        p = self.pki
        self._spawn(
            "kube-apiserver",
            [
                self.bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                f"--service-account-issuer={self.server}",
                "--service-cluster-ip-range=198.19.240.0/20",  # 4094 Services; blackholed too: nothing routes to them
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                # The aggregation layer, for KEDA's external metrics API: the API server proxies as front-proxy-client.
                f"--requestheader-client-ca-file={p / 'ca.crt'}",
                f"--requestheader-allowed-names={FRONT_PROXY_USER}",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / (FRONT_PROXY_USER + '.crt')}",
                f"--proxy-client-key-file={p / (FRONT_PROXY_USER + '.key')}",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-mode=blocking",
                "--v=1",
            ],
        )
        self._wait_ready()
        if not self.with_controllers:
            return
        common = [f"--kubeconfig={self.kubeconfig}", "--leader-elect=false", "--secure-port=0", "--v=1"]
        self._spawn(
            "kube-controller-manager",
            [
                self.bin("kube-controller-manager"),
                *common,
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
                "--concurrent-gc-syncs=5",
                f"--horizontal-pod-autoscaler-sync-period={self.hpa_sync_period}",
                # Fake nodes on a busy 2-core machine: do not evict pods over a late heartbeat.
                "--node-monitor-grace-period=2m",
            ],
        )
        self._spawn("kube-scheduler", [self.bin("kube-scheduler"), *common])
        self._spawn(
            "kwok",
            [
                self.bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                # Fake pod IPs in the benchmarking range the process kubelet blackholes (hack/processkubelet/
                # network.py): nothing that follows an EndpointSlice to a kwok pod can reach another network.
                "--cidr=198.19.0.1/17",
                "--node-ip=198.19.0.1",
                "--node-lease-duration-seconds=40",
            ],
        )
        for i in range(self.process_nodes):
            self._spawn(
                f"process-kubelet-{i}",
                [sys.executable, "-m", "processkubelet", f"--kubeconfig={self.kubeconfig}",
                 f"--state={self.kubelet_dir(i)}", f"--node=proc-node-{i}",
                 f"--backoff-base={self.process_backoff}"],
                env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hack"),
                                                                  os.environ.get("PYTHONPATH", "")])},
            )
        self.add_nodes()
        if self.with_gateway:
            self._start_traefik()
        if self.with_prometheus:
            self._start_prometheus()
        if self.with_keda:
            self._start_keda()

    def install_modelyard(self) -> None:
        """The ModelDeployment CRD as generated (crds/), Established, and the chart's RBAC bound to user
        modelyard-operator (operator_kubeconfig)."""
        self.kubectl("apply", "-f", str(ROOT / "crds" / "modelyard.dev_modeldeployments.yaml"))
        self.wait_established("modeldeployments.modelyard.dev")
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": operator_rbac()}))

    def wait_established(self, *crds: str, timeout: float = 60) -> None:
        """Wait until each CRD is Established. Not `kubectl wait`: a CRD whose status the API server has not
        written yet makes it fail at once ("status.conditions accessor error: <nil>"), which CI hit."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            path = '{.status.conditions[?(@.type=="Established")].status}'
            pending = [c for c in pending if self.kubectl("get", "crd", c, "-o", f"jsonpath={path}",
                                                          check=False).stdout.strip() != "True"]
            if pending and time.monotonic() > deadline:
                raise ControlPlaneMissing(f"CRDs not Established after {timeout}s: {', '.join(pending)}")
            if pending:
                time.sleep(0.3)

    def _start_traefik(self, timeout: float = 60) -> None:
        home = find_traefik()
        self.kubectl("apply", "--server-side", "-f", str(home / "gateway-api-crds"))
        self.wait_established("httproutes.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io")
        # Traefik's own RBAC for its Gateway provider (from its module), bound to a ServiceAccount whose token it
        # uses: its out-of-cluster client takes a bearer token, not a client certificate.
        rbac = [d for d in yaml.safe_load_all((home / "kubernetes-gateway-rbac.yml").read_text())
                if d and d.get("kind") == "ClusterRole"]
        role = rbac[0]["metadata"]["name"]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            *rbac,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "traefik", "namespace": "kube-system"}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "modelyard-local-traefik"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
             "subjects": [{"kind": "ServiceAccount", "name": "traefik", "namespace": "kube-system"}]},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        ]}))
        token = self.kubectl("create", "token", "traefik", "-n", "kube-system", "--duration=720h").stdout.strip()
        (self.workdir / "traefik.token").write_text(token)
        self.gateway_port = self.gateway_port or free_port()
        self.traefik_metrics_port = self.traefik_metrics_port or free_port()
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "traefik"},
             "spec": {"controllerName": "traefik.io/gateway-controller"}},
            # Traefik serves a listener on the entrypoint with the same port.
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
             "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
             "spec": {"gatewayClassName": "traefik", "listeners": [
                 {"name": "http", "protocol": "HTTP", "port": self.gateway_port,
                  "allowedRoutes": {"namespaces": {"from": "All"}}}]}},
        ]}))
        self._spawn("traefik", [
            str(home / "traefik"),
            f"--entrypoints.web.address=127.0.0.1:{self.gateway_port}",
            f"--entrypoints.traefik.address=127.0.0.1:{self.traefik_metrics_port}",
            "--providers.kubernetesgateway=true",
            f"--providers.kubernetesgateway.endpoint={self.server}",
            f"--providers.kubernetesgateway.token={self.workdir / 'traefik.token'}",
            f"--providers.kubernetesgateway.certauthfilepath={self.pki / 'ca.crt'}",
            "--providers.kubernetesgateway.statusaddress.ip=127.0.0.1",
            "--metrics.prometheus=true", "--metrics.prometheus.entrypoint=traefik",
            "--metrics.prometheus.addserviceslabels=true", "--metrics.prometheus.addrouterslabels=true",
            # Traefik's default buckets (0.1, 0.3, 1.2, 5 s) put every fast request at ~99 ms: too coarse to judge.
            "--metrics.prometheus.buckets=0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5",
            "--ping=true", "--ping.entrypoint=traefik", "--log.level=INFO",
            # No calls home: this machine reaches nothing but the package registries, and must not try.
            "--global.checknewversion=false", "--global.sendanonymoususage=false",
        ])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["traefik"].poll() is not None:
                raise ControlPlaneMissing(f"traefik exited: {self.log_tail('traefik')}")
            programmed = self.kubectl("get", "gateway", "-n", GATEWAY_NAMESPACE, GATEWAY_NAME, "-o",
                                      "jsonpath={.status.conditions[?(@.type=='Programmed')].status}",
                                      check=False).stdout
            if programmed == "True":
                return
            time.sleep(0.5)
        raise ControlPlaneMissing(f"the Gateway was not Programmed by Traefik in {timeout}s: "
                                  f"{self.log_tail('traefik')}")

    def _start_keda(self, timeout: float = 90) -> None:
        """KEDA's operator and metrics adapter as local processes (as Traefik is), the adapter registered as the
        external metrics API. The API server reaches the adapter through an ExternalName Service "localhost" (the
        aggregator resolves it to https://localhost:<port>); the two talk mutual-TLS gRPC with one local pair."""
        home = find_keda()
        self.kubectl("apply", "--server-side", "-f", str(home / "crds"))
        self.wait_established("scaledobjects.keda.sh", "cloudeventsources.eventing.keda.sh")
        certs = self.workdir / "keda-certs"
        certs.mkdir(exist_ok=True)
        _Pki.reissue_into(self.pki, certs)
        grpc_port, adapter_port = free_port(), free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "POD_NAMESPACE": KEDA_NAMESPACE,
               "KEDA_CLUSTER_OBJECT_NAMESPACE": KEDA_NAMESPACE, "WATCH_NAMESPACE": ""}
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KEDA_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "keda-metrics-apiserver",
                                                                 "namespace": KEDA_NAMESPACE},
             "spec": {"type": "ExternalName", "externalName": "localhost",
                      "ports": [{"name": "https", "port": adapter_port}]}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
             "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
             "spec": {"group": "external.metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                      "versionPriority": 100,
                      "caBundle": base64.b64encode((self.pki / "ca.crt").read_bytes()).decode(),
                      "service": {"name": "keda-metrics-apiserver", "namespace": KEDA_NAMESPACE,
                                  "port": adapter_port}}},
        ]}))
        self._spawn("keda-operator", [
            str(home / "keda-operator"), "--leader-elect=false", "--zap-log-level=info", "--zap-encoder=console",
            f"--metrics-bind-address=127.0.0.1:{free_port()}", f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            f"--metrics-service-bind-address=127.0.0.1:{grpc_port}", f"--cert-dir={certs}",
            "--enable-cert-rotation=false", f"--ca-dir={certs}",
        ], env=env)
        self._spawn("keda-adapter", [
            str(home / "keda-adapter"), f"--secure-port={adapter_port}", "--bind-address=127.0.0.1",
            f"--tls-cert-file={certs / 'tls.crt'}", f"--tls-private-key-file={certs / 'tls.key'}",
            f"--cert-dir={certs}", f"--client-ca-file={certs / 'ca.crt'}",
            f"--metrics-service-address=127.0.0.1:{grpc_port}", f"--port={free_port()}",
            f"--lister-kubeconfig={self.kubeconfig}", f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}", "--zap-log-level=info",
        ], env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in ("keda-operator", "keda-adapter"):
                if self.procs[name].poll() is not None:
                    raise ControlPlaneMissing(f"{name} exited: {self.log_tail(name)}")
            # Through the API server, as the HPA controller asks: the APIService's Available condition can be True
            # while the aggregator still refuses the adapter's certificate.
            if self.kubectl("get", "--raw", "/apis/external.metrics.k8s.io/v1beta1", check=False).returncode == 0:
                return
            time.sleep(0.5)
        raise ControlPlaneMissing(f"KEDA's external metrics API was not Available in {timeout}s: "
                                  f"{self.log_tail('keda-adapter')}")

    def prometheus_config(self, scrape_interval: str = "2s") -> dict[str, Any]:
        """docs/monitoring/scrape-config.yaml, pointed at this API server, plus what is local: a short interval
        and only the process kubelet's pods (kwok's pods run nothing to scrape)."""
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        for job in config["scrape_configs"]:
            for sd in job["kubernetes_sd_configs"]:
                sd["api_server"] = self.server
                sd["tls_config"] = {"ca_file": str(self.pki / "ca.crt"),
                                    "cert_file": str(self.pki / f"{PROMETHEUS_USER}.crt"),
                                    "key_file": str(self.pki / f"{PROMETHEUS_USER}.key")}
            job["relabel_configs"].insert(0, {"source_labels": ["__meta_kubernetes_pod_node_name"],
                                              "regex": "proc-node-.*", "action": "keep"})
        if self.with_gateway:  # the gateway's own request metrics, per route and backend Service
            config["scrape_configs"].append({"job_name": "traefik", "static_configs": [
                {"targets": [f"127.0.0.1:{self.traefik_metrics_port}"]}]})
        config["global"] = {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval}
        return dict(config)

    def _start_prometheus(self, timeout: float = 60) -> None:
        binary = find_prometheus()
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                           "items": prometheus_rbac()}))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self.prometheus_config()))
        self.prometheus_port = self.prometheus_port or free_port()
        self._spawn("prometheus", [binary, f"--config.file={self.workdir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.workdir / 'prometheus'}",
                                   f"--web.listen-address=127.0.0.1:{self.prometheus_port}", "--log.level=warn"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["prometheus"].poll() is not None:
                raise ControlPlaneMissing(f"prometheus exited: {self.log_tail('prometheus')}")
            try:
                with urllib.request.urlopen(f"{self.prometheus_url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise ControlPlaneMissing(f"prometheus was not ready in {timeout}s: {self.log_tail('prometheus')}")

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        """An instant query against this cluster's Prometheus; the result vector."""
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def kubelet_dir(self, index: int = 0) -> Path:
        """The process kubelet's state: pods/<ns>_<name>_<uid>/logs/<container>.log and the pods' roots."""
        return self.workdir / f"process-kubelet-{index}"

    def container_logs(self, namespace: str | None = None, chars: int = 3000) -> str:
        """The tails of the process kubelet's container logs (of one namespace), for a failing test to print."""
        out = []
        for i in range(self.process_nodes):
            for path in sorted(self.kubelet_dir(i).glob("pods/*/logs/*.log")):
                pod_dir = path.parent.parent.name
                if namespace is None or pod_dir.startswith(f"{namespace}_"):
                    out.append(f"--- {pod_dir}/{path.name}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(out) or "(no container logs)"

    def restart(self, name: str, down_seconds: float = 0) -> float:
        """kill -9 one control-plane process (etcd, kube-apiserver, ...), leave it down for `down_seconds`, start
        it again with the same command line and data; returns time.monotonic() when it answers again (for
        kube-apiserver: /readyz; for etcd: the API server's /readyz, which needs it)."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(down_seconds)
        argv, env = self._commands[name]
        self._spawn(name, argv, env)
        self._wait_ready()
        return time.monotonic()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (closed in stop())
        self._logs.append(log)
        self._commands[name] = (argv, env)
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            env=env)

    def _ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / f"{ADMIN_USER}.crt"), str(self.pki / f"{ADMIN_USER}.key"))
        return ctx

    def _wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise ControlPlaneMissing(f"{name} exited with {proc.returncode}: {self.log_tail(name)}")
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=self._ssl(), timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.3)
        raise ControlPlaneMissing(
            f"kube-apiserver was not ready in {timeout}s ({last}): {self.log_tail('kube-apiserver')}"
        )

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def _write_kubeconfig(self, path: Path, user: str) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": self.server, "certificate-authority": str(self.pki / "ca.crt")}}
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{user}.crt"),
                        "client-key": str(self.pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [{"name": "local", "context": {"cluster": "local", "user": user, "namespace": "default"}}],
            "current-context": "local",
        }
        path.write_text(yaml.safe_dump(cfg))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl as admin against this cluster."""
        proc = subprocess.run(
            [self.bin("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, capture_output=True, text=True, check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def add_nodes(self) -> None:
        """Register kwok's fake nodes: GPU nodes (labelled, tainted) and CPU-only nodes; wait until Ready."""
        nodes = [self._node(f"gpu-node-{i}", self.gpus_per_node) for i in range(self.gpu_nodes)]
        nodes += [self._node(f"cpu-node-{i}", 0) for i in range(self.cpu_nodes)]
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=120s")
        if self.process_nodes:  # the process kubelet registers its own node(s)
            names = [f"node/proc-node-{i}" for i in range(self.process_nodes)]
            deadline = time.monotonic() + 60
            while self.kubectl("get", *names, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise ControlPlaneMissing(f"the process kubelet did not register: "
                                              f"{self.log_tail('process-kubelet-0')}")
                time.sleep(0.3)
            self.kubectl("wait", "--for=condition=Ready", *names, "--timeout=60s")

    @staticmethod
    def _node(name: str, gpus: int) -> dict[str, Any]:
        capacity = {"cpu": "16", "memory": "64Gi", "pods": "110"}
        labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "type": "kwok"}
        spec: dict[str, Any] = {}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
            labels["modelyard.dev/accelerator"] = "nvidia"
            labels["nvidia.com/gpu.present"] = "true"
            spec["taints"] = [GPU_TAINT]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": labels, "annotations": {KWOK_NODE_ANNOTATION: "fake"}},
            "spec": spec,
            "status": {"capacity": capacity, "allocatable": capacity},
        }

    def audit_events(self) -> list[dict[str, Any]]:
        """Every request the API server has logged so far (ResponseComplete stage)."""
        if not self.audit_log.exists():
            return []
        out = []
        for line in self.audit_log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(list(self.procs.values())):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
