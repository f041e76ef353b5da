"""Numbers from Prometheus's HTTP API. An empty result or NaN (0/0: no requests) is "no data", not zero."""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request

from modelyard.api.v1alpha1.rollout import Analysis, CheckResult, Measurement
from modelyard.measure.promql import Backend, checks, requests


class PrometheusError(RuntimeError):
    """Prometheus could not be asked (down, or it refused the query): the analysis is skipped, not failed."""


class Prometheus:
    def __init__(self, url: str, timeout: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def value(self, query: str) -> float | None:
        """The query's single number, or None when it has no data."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise PrometheusError(f"query failed: {exc}: {query}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}: {query}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            result = [{"value": result}]
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(f"the query returned {len(result)} series, not one number: {query}")
        number = float(result[0]["value"][1])
        return None if math.isnan(number) or math.isinf(number) else number


def measure(prometheus: Prometheus, analysis: Analysis, canary: Backend, stable: Backend, window: str,
            now: float) -> Measurement:
    """One analysis of the canary over the last `window`."""
    count = prometheus.value(requests(canary, window))
    results = []
    for check in checks(analysis, canary, stable, window):
        value = prometheus.value(check.query)
        results.append(CheckResult(name=check.name, value=value, threshold=check.threshold,
                                   passed=None if value is None else check.passes(value)))
    return Measurement(at=now, requests=round(count or 0), checks=results)
