"""The checks of spec.rollout.canary.analysis as PromQL: one place, so every query is written (and tested) once.

The gateway's own metrics measure what clients saw. Traefik, the Gateway API implementation the local cluster
runs, labels a Gateway backend `service="<namespace>-<service>-http-<port>@kubernetesgateway"` (non-alphanumeric
runs folded to '-'); each revision is its own backend Service, so the canary and the stable revision are told
apart by that label. A query that returns no sample means "no data", never zero (prometheus.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelyard.api.names import traefik_backend
from modelyard.api.v1alpha1.rollout import Analysis, Latency


@dataclass(frozen=True)
class Backend:
    """One revision behind the gateway: its Service and port."""

    namespace: str
    service: str
    port: int
    revision: str
    modeldeployment: str = ""
    """For the checks on the pods' own metrics (analysis.llm): the scrape config's label."""


@dataclass(frozen=True)
class Check:
    name: str
    query: str
    threshold: str
    """As a person reads it: '>= 99%'."""
    passes: Callable[[float], bool]


def traefik_service(b: Backend) -> str:
    """Traefik's name for a Gateway API backend (provider.Normalize of namespace-name-http-port)."""
    return traefik_backend(b.namespace, b.service, b.port)


def _sel(b: Backend, extra: str = "") -> str:
    return "{" + f'service="{traefik_service(b)}"' + (f",{extra}" if extra else "") + "}"


def requests(b: Backend, window: str) -> str:
    return f"sum(increase(traefik_service_requests_total{_sel(b)}[{window}]))"


def success_rate(b: Backend, window: str) -> str:
    """Percent of requests that did not end in a 5xx."""
    not_5xx = _sel(b, 'code!~"5.."')
    ok = f"sum(rate(traefik_service_requests_total{not_5xx}[{window}]))"
    return f"100 * {ok} / sum(rate(traefik_service_requests_total{_sel(b)}[{window}]))"


def latency_ms(b: Backend, quantile: float, window: str) -> str:
    buckets = f"traefik_service_request_duration_seconds_bucket{_sel(b)}"
    return f"1000 * histogram_quantile({quantile}, sum by (le) (rate({buckets}[{window}])))"


def _pods(b: Backend) -> str:
    """The scrape config's labels of one revision's Triton pods."""
    return f'{{namespace="{b.namespace}",modeldeployment="{b.modeldeployment}",revision="{b.revision}"}}'


def engine_latency_ms(b: Backend, histogram: str, quantile: float, window: str) -> str:
    """A quantile of one of the vLLM backend's histograms (seconds), in milliseconds."""
    return f"1000 * histogram_quantile({quantile}, sum by (le) (rate({histogram}_bucket{_pods(b)}[{window}])))"


def generation_success_rate(b: Backend, window: str) -> str:
    """Percent of the revision's Triton requests (generations) that did not fail."""
    ok = f"sum(increase(nv_inference_request_success{_pods(b)}[{window}]))"
    failed = f"sum(increase(nv_inference_request_failure{_pods(b)}[{window}]))"
    return f"100 * {ok} / ({ok} + {failed})"


def _latency_checks(name: str, lat: Latency, canary: str, stable: str) -> list[Check]:
    """maxMs and maxRatioToStable of one latency, given the canary's and the stable revision's query."""
    out = []
    if lat.max_ms is not None:
        most = lat.max_ms
        out.append(Check(name, canary, f"<= {most:g} ms", lambda v: v <= most))
    if lat.max_ratio_to_stable is not None:
        ratio = lat.max_ratio_to_stable
        out.append(Check(f"{name}-vs-stable", f"({canary}) / ({stable})", f"<= {ratio:g}x", lambda v: v <= ratio))
    return out


def custom(query: str, canary: Backend, stable: Backend) -> str:
    """$canary / $stable: the revisions; $canary_service / $stable_service: their gateway backends."""
    out = query.replace("$canary_service", traefik_service(canary)).replace("$stable_service", traefik_service(stable))
    return out.replace("$canary", canary.revision).replace("$stable", stable.revision)


def checks(analysis: Analysis, canary: Backend, stable: Backend, window: str) -> list[Check]:
    """The canary's checks, in the order they are reported."""
    out = []
    if analysis.min_success_rate is not None:
        low = analysis.min_success_rate
        out.append(Check("success-rate", success_rate(canary, window), f">= {low:g}%", lambda v: v >= low))
    if analysis.latency is not None:
        lat = analysis.latency
        out += _latency_checks(f"latency-p{lat.quantile * 100:g}", lat, latency_ms(canary, lat.quantile, window),
                               latency_ms(stable, lat.quantile, window))
    llm = analysis.llm
    engine: list[tuple[str, str, Latency | None]] = [
        ("ttft", "vllm:time_to_first_token_seconds", llm.time_to_first_token if llm else None),
        ("tpot", "vllm:time_per_output_token_seconds", llm.time_per_output_token if llm else None)]
    for name, histogram, check in engine:
        if check is not None:
            out += _latency_checks(f"{name}-p{check.quantile * 100:g}", check,
                                   engine_latency_ms(canary, histogram, check.quantile, window),
                                   engine_latency_ms(stable, histogram, check.quantile, window))
    if llm and llm.min_generation_success_rate is not None:
        low = llm.min_generation_success_rate
        out.append(Check("generation-success-rate", generation_success_rate(canary, window), f">= {low:g}%",
                         lambda v: v >= low))
    for c in analysis.custom or []:
        lo, hi = c.min, c.max
        bounds = " and ".join(b for b in (f">= {lo:g}" if lo is not None else "", f"<= {hi:g}" if hi is not None
                                          else "") if b)
        out.append(Check(c.name, custom(c.query, canary, stable), bounds, _within(lo, hi)))
    return out


def _within(lo: float | None, hi: float | None) -> Callable[[float], bool]:
    return lambda v: (lo is None or v >= lo) and (hi is None or v <= hi)

