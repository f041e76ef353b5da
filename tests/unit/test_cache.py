"""The cache's store: what a watch, a write and a fresh list may change in it (kube/cache.py)."""

from __future__ import annotations

from typing import Any

import pytest

from modelyard.kube.cache import TOMBSTONE_SECONDS, Store


def obj(name: str, rv: int, uid: str = "u1", ns: str = "ns", model: str | None = "m", **labels: str) -> dict[str, Any]:
    all_labels = {**({"modelyard.dev/deployment": model} if model else {}), **labels}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": str(rv), "labels": all_labels,
                         "managedFields": [{"manager": "x"}]}}


def version(store: Store, name: str) -> str | None:
    found = store.get("ns", name)
    return None if found is None else found["metadata"]["resourceVersion"]


@pytest.mark.parametrize(
    ("held", "arriving", "kept"),
    [
        (5, 7, "7"),  # newer: stored
        (7, 5, "7"),  # a watch's older copy after a write's response: ignored
        (7, 7, "7"),  # the same version again
    ],
)
def test_an_older_version_never_replaces_a_newer_one(held: int, arriving: int, kept: str) -> None:
    store = Store()
    store.upsert(obj("a", held))
    store.upsert(obj("a", arriving))
    assert version(store, "a") == kept


def test_a_new_incarnation_replaces_the_old_whatever_its_version() -> None:
    store = Store()
    store.upsert(obj("a", 9, uid="old"))
    store.upsert(obj("a", 3, uid="new"))
    found = store.get("ns", "a")
    assert found is not None and found["metadata"]["uid"] == "new"


def test_what_the_operator_deletes_is_gone_and_its_late_copies_are_ignored() -> None:
    store = Store()
    store.upsert(obj("a", 5), now=0)
    store.forget("ns", "a", now=0)
    assert store.get("ns", "a") is None
    assert not store.upsert(obj("a", 6), now=1)  # the watch had it in flight
    assert store.get("ns", "a") is None
    assert store.upsert(obj("a", 1, uid="u2"), now=2)  # created again: another incarnation


def test_a_tombstone_expires_and_a_deleted_event_clears_it() -> None:
    store = Store()
    store.upsert(obj("a", 5), now=0)
    store.forget("ns", "a", now=0)
    assert store.upsert(obj("a", 6), now=TOMBSTONE_SECONDS + 1)
    store.forget("ns", "b", now=0)  # nothing held: no tombstone
    assert store.upsert(obj("b", 1), now=0)
    store.upsert(obj("c", 1), now=0)
    store.forget("ns", "c", now=0)
    assert not store.remove(obj("c", 2))  # the watch's DELETED: nothing held any more, the tombstone goes
    assert store.upsert(obj("c", 3), now=0)


def test_a_deleted_event_of_an_old_incarnation_leaves_the_new_one() -> None:
    store = Store()
    store.upsert(obj("a", 9, uid="new"))
    assert not store.remove(obj("a", 4, uid="old"))
    assert store.get("ns", "a") is not None
    assert store.remove(obj("a", 10, uid="new"))
    assert store.get("ns", "a") is None


def test_a_fresh_list_replaces_its_namespace_and_says_what_went() -> None:
    store = Store()
    store.upsert(obj("a", 1))
    store.upsert(obj("b", 1))
    store.upsert(obj("c", 1, ns="other"))
    gone = store.replace([obj("b", 2), obj("d", 2)], "ns")
    assert [g["metadata"]["name"] for g in gone] == ["a"]
    assert sorted(store.keys()) == [("ns", "b"), ("ns", "d"), ("other", "c")]
    assert version(store, "b") == "2"
    gone = store.replace([], None)
    assert sorted(g["metadata"]["name"] for g in gone) == ["b", "c", "d"]
    assert len(store) == 0


def test_select_by_labels_uses_the_model_index_and_follows_label_changes() -> None:
    store = Store()
    store.upsert(obj("a", 1, model="m", rev="r1"))
    store.upsert(obj("b", 1, model="m", rev="r2"))
    store.upsert(obj("c", 1, model="n", rev="r1"))
    store.upsert(obj("d", 1, model="m", ns="other"))
    names = [o["metadata"]["name"] for o in store.select("ns", {"modelyard.dev/deployment": "m"})]
    assert names == ["a", "b"]
    assert [o["metadata"]["name"] for o in store.select("ns", {"rev": "r1"})] == ["a", "c"]
    store.upsert(obj("a", 2, model="n", rev="r1"))  # relabelled: moves to the other model's index
    assert [o["metadata"]["name"] for o in store.select("ns", {"modelyard.dev/deployment": "m"})] == ["b"]
    assert [o["metadata"]["name"] for o in store.select("ns", {"modelyard.dev/deployment": "n"})] == ["a", "c"]
    store.remove(obj("c", 3, model="n"))
    assert [o["metadata"]["name"] for o in store.select("ns", {"modelyard.dev/deployment": "n"})] == ["a"]


def test_reads_are_copies_without_managed_fields() -> None:
    store = Store()
    store.upsert(obj("a", 1))
    first = store.get("ns", "a")
    assert first is not None and "managedFields" not in first["metadata"]
    first["metadata"]["labels"]["changed"] = "yes"
    again = store.get("ns", "a")
    assert again is not None and "changed" not in again["metadata"]["labels"]
    listed = store.select("ns", {})
    listed[0]["metadata"]["name"] = "renamed"
    assert store.get("ns", "a") is not None
