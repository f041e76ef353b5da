"""Watch-fed caches of the objects the operator reads: the informer model of client-go and controller-runtime.

Each kind the reconcile reads has an informer: it LISTs once, then WATCHes from the list's resourceVersion (with
bookmarks, so a quiet watch stays resumable), feeds every event into a store and tells the operator (which queues
the owning model's reconcile). A watch that ends is resumed from the last resourceVersion seen; only a "410 Gone"
(the version is too old) lists again, and the list replaces the store, so an object deleted while no watch ran
is gone from the cache too (kopf's own watches cannot say that).

Reads then come from memory: a reconcile with nothing to change makes no request at all, and the periodic resync
is a pass over the stored models. Two rules keep a cached read safe:
- what the operator writes is stored from the write's response at once (write-through), and an older copy that
  a watch delivers afterwards does not replace it (resourceVersions compared as the integers etcd makes them).
  A reconcile right after a status write therefore sees that status, and records no event twice;
- what the operator deletes leaves the store at once, and the watch's late copies of it are ignored.

Children are cached by the labels every child carries (managed-by modelyard and the model's name): a Service,
HTTPRoute or autoscaler name that some other tool owns is not in the cache, so a miss there is asked of the API
server (it is a name conflict to report, or the object does not exist yet). Kinds that the operator does not label
(the HPA KEDA makes) are cached whole. Secrets are never cached (credentials stay out of the operator's memory, and
the chart grants get on Secrets, not list or watch): a model that names a Secret still reads it on each reconcile.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from modelyard.api.names import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY
from modelyard.kube.client import (
    DEPLOYMENTS,
    HPAS,
    HTTP_ROUTES,
    JOBS,
    MODEL_DEPLOYMENTS,
    PODS,
    SCALED_OBJECTS,
    SERVICES,
    Kube,
    Obj,
    Resource,
    _items,
    resource_of,
)

log = logging.getLogger(__name__)

Key = tuple[str, str]
EventHandler = Callable[[str, Obj], None]
"""Called with the event type (ADDED, MODIFIED, DELETED; LISTED for each object a list returned) and the object,
after the store holds it."""

CHILD_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_DEPLOYMENT}"
"""What every child of a ModelDeployment carries: the managed-by label and the model's name."""

TOMBSTONE_SECONDS = 60.0
"""How long the watch's copies of an object the operator deleted are ignored (until its DELETED event comes)."""

WATCH_SECONDS = 300
"""A watch asks the API server to end after this long; it is resumed from the last resourceVersion."""


def _version(obj: Obj) -> int | None:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion", ""))
    except ValueError:
        return None


def _strip(obj: Obj) -> Obj:
    """What the cache keeps of an object: all but managedFields (the largest part of most objects, never read)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict) and "managedFields" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}
    return obj


def _matches(obj: Obj, labels: dict[str, str]) -> bool:
    have: dict[str, str] = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class Store:
    """Objects of one kind by namespace and name, indexed by the model they belong to (LABEL_DEPLOYMENT).

    Reads return deep copies: a reconcile may change what it read without changing the cache."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, Obj] = {}
        self._by_model: dict[Key, set[str]] = {}
        self._tombstones: dict[Key, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            obj = self._objects.get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def select(self, namespace: str, labels: dict[str, str]) -> list[Obj]:
        with self._lock:
            model = labels.get(LABEL_DEPLOYMENT)
            if model is not None:
                names: Iterable[str] = sorted(self._by_model.get((namespace, model), ()))
                candidates = [self._objects[(namespace, n)] for n in names]
            else:
                candidates = [o for (ns, _), o in sorted(self._objects.items()) if ns == namespace]
            found = [o for o in candidates if _matches(o, labels)]
        return copy.deepcopy(found)

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._objects)

    def _index(self, key: Key, obj: Obj | None, add: bool) -> None:
        model = ((obj or {}).get("metadata", {}).get("labels") or {}).get(LABEL_DEPLOYMENT)
        if model is None:
            return
        names = self._by_model.setdefault((key[0], model), set())
        if add:
            names.add(key[1])
        else:
            names.discard(key[1])
            if not names:
                del self._by_model[(key[0], model)]

    def _put(self, key: Key, obj: Obj) -> None:
        self._index(key, self._objects.get(key), add=False)
        self._objects[key] = obj
        self._index(key, obj, add=True)

    def _drop(self, key: Key) -> Obj | None:
        old = self._objects.pop(key, None)
        self._index(key, old, add=False)
        return old

    @staticmethod
    def _key(obj: Obj) -> Key:
        meta = obj["metadata"]
        return meta.get("namespace", ""), meta["name"]

    def _tombstoned(self, key: Key, obj: Obj, now: float) -> bool:
        stone = self._tombstones.get(key)
        if stone is None:
            return False
        uid, until = stone
        if now >= until or obj.get("metadata", {}).get("uid") != uid:
            del self._tombstones[key]
            return False
        return True

    def upsert(self, obj: Obj, now: float | None = None) -> bool:
        """Store `obj` unless the store holds a newer version of it, or the operator deleted it. True if stored."""
        obj = _strip(obj)
        key = self._key(obj)
        with self._lock:
            if self._tombstoned(key, obj, time.monotonic() if now is None else now):
                return False
            old = self._objects.get(key)
            if old is not None and old.get("metadata", {}).get("uid") == obj["metadata"].get("uid"):
                have, got = _version(old), _version(obj)
                if have is not None and got is not None and got < have:
                    return False
            self._put(key, obj)
            return True

    def remove(self, obj: Obj) -> bool:
        """The watch says `obj` is gone. True if the store held it (and the same incarnation)."""
        key = self._key(obj)
        with self._lock:
            self._tombstones.pop(key, None)
            old = self._objects.get(key)
            if old is None or old.get("metadata", {}).get("uid") != obj.get("metadata", {}).get("uid"):
                return False
            self._drop(key)
            return True

    def forget(self, namespace: str, name: str, now: float | None = None) -> None:
        """The operator deleted this object: out of the store now, and the watch's late copies of it ignored."""
        key = (namespace, name)
        with self._lock:
            old = self._drop(key)
            uid = (old or {}).get("metadata", {}).get("uid")
            if uid:
                self._tombstones[key] = (uid, (time.monotonic() if now is None else now) + TOMBSTONE_SECONDS)

    def replace(self, objects: list[Obj], namespace: str | None) -> list[Obj]:
        """A fresh list of `namespace` (None: every namespace) replaces what the store held of it. Returns the
        objects that are gone."""
        fresh = {self._key(o): _strip(o) for o in objects}
        with self._lock:
            gone = [self._objects[k] for k in list(self._objects)
                    if (namespace is None or k[0] == namespace) and k not in fresh]
            for obj in gone:
                self._drop(self._key(obj))
            for key, obj in fresh.items():
                self._put(key, obj)
        return gone


class Informer:
    """LIST then WATCH one kind in one namespace (or all), feeding a Store, in a thread of its own."""

    def __init__(self, api: client.ApiClient, res: Resource, namespace: str | None, selector: str | None,
                 store: Store, handler: EventHandler | None = None) -> None:
        self.api, self.res, self.namespace, self.selector = api, res, namespace, selector
        self.store, self.handler = store, handler
        self.synced = threading.Event()
        self.available = True
        """False while the kind does not exist on the API server (a CRD not installed: Gateway API, KEDA)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"informer-{res.plural}-{namespace or 'all'}")

    def start(self) -> Informer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """No more events are handled. The watch's connection is not closed from here (closing an SSL socket that
        another thread reads blocks until the read ends): the thread is a daemon, and goes with the process."""
        self._stop.set()

    @property
    def _path(self) -> str:
        base = f"/apis/{self.res.group}/{self.res.version}" if self.res.group else f"/api/{self.res.version}"
        return f"{base}/namespaces/{self.namespace}/{self.res.plural}" if self.namespace else \
            f"{base}/{self.res.plural}"

    def _query(self) -> list[tuple[str, str]]:
        return [("labelSelector", self.selector)] if self.selector else []

    def _notify(self, type_: str, obj: Obj) -> None:
        if self.handler is not None:
            try:
                self.handler(type_, obj)
            except Exception:  # a handler's bug must not end the watch
                log.exception("handling %s of %s failed", type_, self.res.plural)

    def _list(self) -> str:
        listing = self.api.call_api(self._path, "GET", query_params=self._query(),
                                    header_params={"Accept": "application/json"}, response_type="object",
                                    auth_settings=["BearerToken"], _return_http_data_only=True,
                                    _preload_content=True, _request_timeout=60)
        items = _items(listing)
        gone = self.store.replace(items, self.namespace)
        for obj in gone:
            self._notify("DELETED", obj)
        for obj in items:
            self._notify("LISTED", obj)
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    def _watch(self, version: str) -> str | None:
        """Watch from `version`; return the version to resume from, or None when it is too old (list again)."""
        query = [*self._query(), ("watch", "true"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(WATCH_SECONDS))]
        response = self.api.call_api(
            self._path, "GET", query_params=query, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False,
            _request_timeout=(30, WATCH_SECONDS + 30))
        try:
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return version
                event = json.loads(line)
                type_, obj = event.get("type"), event.get("object") or {}
                if type_ == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise client.ApiException(status=obj.get("code", 500), reason=obj.get("message", ""))
                version = str(obj.get("metadata", {}).get("resourceVersion", version))
                if type_ == "BOOKMARK":
                    continue
                obj = {"apiVersion": self.res.api_version, **obj}
                if type_ == "DELETED":
                    if self.store.remove(obj):
                        self._notify(type_, obj)
                elif self.store.upsert(obj):
                    self._notify(str(type_), obj)
        finally:
            response.release_conn()
        return version

    def _run(self) -> None:
        version: str | None = None
        backoff = 0.5
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                    self.available = True
                    self.synced.set()
                version = self._watch(version)
                backoff = 0.5
            except client.ApiException as exc:
                if exc.status == 404:  # the kind is not served (yet): reads go to the API server meanwhile
                    self.available = False
                    self.synced.set()
                    version = None
                    self._stop.wait(30)
                    continue
                if exc.status == 410:
                    version = None
                    continue
                log.warning("watch of %s failed (%s %s); again in %.1fs", self.res.plural, exc.status, exc.reason,
                            backoff)
                version = None if exc.status in (401, 403) else version
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            except Exception as exc:  # unreachable API server, a reset connection: resume
                if self._stop.is_set():
                    return
                log.warning("watch of %s ended (%s); resuming in %.1fs", self.res.plural, str(exc)[:200], backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


CACHED: dict[Resource, str | None] = {
    MODEL_DEPLOYMENTS: None,
    DEPLOYMENTS: CHILD_SELECTOR,
    PODS: CHILD_SELECTOR,
    JOBS: CHILD_SELECTOR,
    SERVICES: CHILD_SELECTOR,
    HTTP_ROUTES: CHILD_SELECTOR,
    SCALED_OBJECTS: CHILD_SELECTOR,
    HPAS: None,  # KEDA names and labels the HPA it makes: cached whole
}
"""The kinds the operator reads, and the label selector of their cache (None: every object of the kind)."""

ON_FIRST_USE = frozenset({HTTP_ROUTES, SCALED_OBJECTS, HPAS})
"""Kinds watched only once a reconcile first reads one (a model with spec.traffic or spec.scaling), as
controller-runtime starts an informer: a cluster without Gateway API or KEDA, or whose models use neither, is not
asked for them (an absent CRD would otherwise be listed again every 30 s)."""


class Caches:
    """One store and its informers (one per watched namespace, or one for all) for each kind in CACHED."""

    def __init__(self, api: client.ApiClient, namespaces: list[str],
                 handlers: dict[Resource, EventHandler] | None = None) -> None:
        self._lock = threading.Lock()
        self._started: set[Resource] = set()
        self.stores = {res: Store() for res in CACHED}
        scopes: list[str | None] = [*namespaces] or [None]  # None: every namespace, with one watch
        self.informers: dict[Resource, list[Informer]] = {
            res: [Informer(api, res, ns, selector, self.stores[res], (handlers or {}).get(res)) for ns in scopes]
            for res, selector in CACHED.items()
        }

    def start(self) -> Caches:
        for res in CACHED:
            if res not in ON_FIRST_USE:
                self._start(res)
        return self

    def _start(self, res: Resource) -> None:
        with self._lock:
            if res in self._started:
                return
            self._started.add(res)
        for informer in self.informers[res]:
            informer.start()

    def stop(self) -> None:
        for informers in self.informers.values():
            for informer in informers:
                informer.stop()

    def wait_synced(self, timeout: float) -> bool:
        """Wait until every started informer has listed once."""
        deadline = time.monotonic() + timeout
        with self._lock:
            started = [i for res in self._started for i in self.informers[res]]
        return all(i.synced.wait(max(deadline - time.monotonic(), 0)) for i in started)

    def usable(self, res: Resource) -> Store | None:
        """The store for `res` when every informer of it has listed and the kind exists; else None (ask). The
        first use of a kind in ON_FIRST_USE starts its informers (this read and the next few, until they have
        listed, go to the API server)."""
        informers = self.informers.get(res)
        if not informers:
            return None
        if res not in self._started:
            self._start(res)
        if not all(i.synced.is_set() and i.available for i in informers):
            return None
        return self.stores[res]


class CachedKube(Kube):
    """Kube whose reads come from the caches (falling back to the API server where the cache cannot answer), and
    whose writes go to the API server and into the caches."""

    def __init__(self, api: client.ApiClient, field_manager: str, caches: Caches) -> None:
        super().__init__(api, field_manager)
        self.caches = caches

    def get(self, res: Resource, namespace: str, name: str) -> Obj | None:
        store = self.caches.usable(res)
        if store is None:
            return super().get(res, namespace, name)
        found = store.get(namespace, name)
        if found is not None or CACHED[res] is None:
            return found
        return super().get(res, namespace, name)  # not one of ours (a name conflict), or not there: ask

    def list_by_labels(self, res: Resource, namespace: str, labels: dict[str, str]) -> list[Obj]:
        store = self.caches.usable(res)
        if store is None:
            return super().list_by_labels(res, namespace, labels)
        return store.select(namespace, labels)

    def apply(self, obj: Obj, subresource: str | None = None, field_manager: str | None = None) -> Obj:
        result = super().apply(obj, subresource, field_manager)
        res = MODEL_DEPLOYMENTS if subresource is not None else None
        self._remember(res, result)
        return result

    def _remember(self, res: Resource | None, result: Obj) -> None:
        if not result.get("metadata", {}).get("name"):
            return
        try:
            res = res or resource_of(result)
        except KeyError:
            return
        store = self.caches.stores.get(res)
        if store is not None:
            store.upsert(result)

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        super().delete(res, namespace, name)
        store = self.caches.stores.get(res)
        if store is not None:
            store.forget(namespace, name)
