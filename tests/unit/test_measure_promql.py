"""The analysis checks as PromQL (their numbers are tested against real Traefik series in test_gateway.py)."""

from __future__ import annotations

from modelyard.api.v1alpha1.rollout import Analysis
from modelyard.measure.promql import Backend, checks, custom, success_rate, traefik_service

CANARY = Backend("team-a", "resnet-b28f5967ad", 8000, "b28f5967ad")
STABLE = Backend("team-a", "resnet-1aa7a97de4", 8000, "1aa7a97de4")


def test_traefiks_name_for_a_gateway_backend() -> None:
    assert traefik_service(CANARY) == "team-a-resnet-b28f5967ad-http-8000@kubernetesgateway"
    assert traefik_service(Backend("a.b", "c_d", 80, "r")) == "a-b-c-d-http-80@kubernetesgateway"


def test_success_rate_counts_everything_but_5xx() -> None:
    assert success_rate(CANARY, "30s") == (
        '100 * sum(rate(traefik_service_requests_total{service="team-a-resnet-b28f5967ad-http-8000@kubernetesgateway",'
        'code!~"5.."}[30s])) / sum(rate(traefik_service_requests_total{service="team-a-resnet-b28f5967ad-http-8000'
        '@kubernetesgateway"}[30s]))')


def test_checks_follow_the_analysis_spec() -> None:
    analysis = Analysis.model_validate({"minSuccessRate": 99.5, "latency": {"maxMs": 200, "maxRatioToStable": 1.5},
                                        "custom": [{"name": "queue", "query": "q{rev=\"$canary\"}", "max": 5000}]})
    got = checks(analysis, CANARY, STABLE, "1m")
    assert [(c.name, c.threshold) for c in got] == [
        ("success-rate", ">= 99.5%"), ("latency-p99", "<= 200 ms"), ("latency-p99-vs-stable", "<= 1.5x"),
        ("queue", "<= 5000")]
    assert [c.passes(v) for c, v in zip(got, (99.5, 201, 1.4, 5000), strict=True)] == [True, False, True, True]
    assert "1aa7a97de4" in got[2].query and got[3].query == 'q{rev="b28f5967ad"}'
    assert Analysis.model_validate({"minSuccessRate": None}).min_success_rate is None


def test_custom_queries_name_the_revisions_and_their_backends() -> None:
    assert custom('x{s="$canary_service"} / y{r="$stable"}', CANARY, STABLE) == (
        'x{s="team-a-resnet-b28f5967ad-http-8000@kubernetesgateway"} / y{r="1aa7a97de4"}')


def test_llm_checks_read_the_engines_histograms_and_tritons_failures_of_the_canarys_pods() -> None:
    canary = Backend("team-a", "llama-b28f5967ad", 8000, "b28f5967ad", "llama")
    stable = Backend("team-a", "llama-1aa7a97de4", 8000, "1aa7a97de4", "llama")
    analysis = Analysis.model_validate({"minSuccessRate": None, "llm": {
        "timeToFirstToken": {"quantile": 0.9, "maxMs": 500, "maxRatioToStable": 2},
        "timePerOutputToken": {"maxMs": 80}, "minGenerationSuccessRate": 99}})
    got = checks(analysis, canary, stable, "1m")
    assert [(c.name, c.threshold) for c in got] == [
        ("ttft-p90", "<= 500 ms"), ("ttft-p90-vs-stable", "<= 2x"), ("tpot-p99", "<= 80 ms"),
        ("generation-success-rate", ">= 99%")]
    pods = '{namespace="team-a",modeldeployment="llama",revision="b28f5967ad"}'
    assert got[0].query == ("1000 * histogram_quantile(0.9, sum by (le) "
                            f"(rate(vllm:time_to_first_token_seconds_bucket{pods}[1m])))")
    assert 'revision="1aa7a97de4"' in got[1].query and "vllm:time_per_output_token_seconds_bucket" in got[2].query
    assert got[3].query == (f"100 * sum(increase(nv_inference_request_success{pods}[1m])) / "
                            f"(sum(increase(nv_inference_request_success{pods}[1m])) + "
                            f"sum(increase(nv_inference_request_failure{pods}[1m])))")
    assert [c.passes(v) for c, v in zip(got, (501, 1.9, 80, 98.9), strict=True)] == [False, True, True, False]
