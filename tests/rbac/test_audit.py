"""Least privilege, proven on the API server's audit log: after the whole integration and e2e flow (the operator as
user modelyard-operator, bound to exactly the chart's rules), every verb the chart grants was used at least once
and no request of the operator's was refused. A granted verb that nothing uses is a permission to drop; a refusal
is a rule missing. The test runs last (tests/conftest.py orders it) and reads the session's audit log."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import LEADER_ELECTION_RULES, OPERATOR_USER, RBAC_RULES, LocalCluster

pytestmark = [pytest.mark.e2e]

TIERS = ("tests/integration", "tests/e2e")


def _granted(path: Path) -> set[tuple[str, str, str]]:
    return {(group, resource, verb) for rule in yaml.safe_load(path.read_text())
            for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}


def _uses(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (group, resource, verb) permissions a request used. A server-side apply that creates its object (a
    PATCH answered 201) is authorized as create too, as the API server does."""
    ref = event.get("objectRef")
    if not ref or "resource" not in ref:
        return []  # a non-resource URL: discovery, /version
    resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
    group = ref.get("apiGroup", "")
    uses = [(group, resource, event["verb"])]
    if event["verb"] == "patch" and event.get("responseStatus", {}).get("code") == 201:
        uses.append((group, resource, "create"))
    return uses


def test_every_granted_verb_is_used_and_no_request_is_refused(cluster: LocalCluster,
                                                               request: pytest.FixtureRequest) -> None:
    ran = {str(Path(item.path).relative_to(Path(request.config.rootpath))) for item in request.session.items}
    root = Path(request.config.rootpath)
    missing = sorted(str(p.relative_to(root)) for tier in TIERS for p in (root / tier).glob("test_*.py")
                     if str(p.relative_to(root)) not in ran)
    assert not missing, (f"the audit judges the whole integration and e2e flow, and this session left out "
                         f"{', '.join(missing)}: run `make test` (or pytest tests/integration tests/e2e tests/rbac)")
    events = [e for e in cluster.audit_events() if e.get("user", {}).get("username") == OPERATOR_USER]
    assert events, "the audit log holds no request of the operator's"
    # Refused by the authorizer (RBAC), not by admission: a namespace being deleted also answers 403.
    refused = Counter(f"{e['verb']} {e['requestURI'].split('?')[0]}" for e in events
                      if e.get("annotations", {}).get("authorization.k8s.io/decision") == "forbid")
    assert not refused, f"requests of the operator refused by RBAC (a rule is missing): {refused.most_common(20)}"
    used = {use for e in events for use in _uses(e)}
    granted = _granted(RBAC_RULES) | _granted(LEADER_ELECTION_RULES)
    print("used:", sorted(used))
    unused = sorted(granted - used)
    assert not unused, f"granted and never used by the whole flow (drop them from the chart's rules): {unused}"
