"""A bounded load generator: inferences at a fixed rate through the gateway, each answer recorded with who served it.

Bounded: a fixed request rate and a fixed number of worker threads, on loopback only (the local gateway).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from canary.repositories import MODEL

BODY = json.dumps({"inputs": [{"name": "X", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}).encode()


@dataclass(frozen=True)
class Answer:
    at: float
    """time.time() when the request was sent."""
    status: int
    """HTTP status; 0 when the connection failed."""
    who: str
    """The revision identity that answered (from WHO or from its error); '' when nothing says."""
    detail: str = ""


@dataclass
class Load:
    url: str
    host: str
    rate: float = 20.0
    workers: int = 16
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def ask(self) -> Answer:
        sent = time.time()
        req = urllib.request.Request(f"{self.url}/v2/models/{MODEL}/infer", data=BODY, method="POST",
                                     headers={"Host": self.host, "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                out = json.loads(resp.read())
                who = next(o["data"][0] for o in out["outputs"] if o["name"] == "WHO")
                return Answer(sent, resp.status, str(who))
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            who = text.split('"error":"', 1)[-1].split(":", 1)[0] if "injected failure" in text else ""
            return Answer(sent, exc.code, who, text[:200])
        except OSError as exc:
            return Answer(sent, 0, "", str(exc)[:200])

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with ThreadPoolExecutor(self.workers) as pool:
            next_at = time.monotonic()
            while not self._stop.is_set():
                fut = pool.submit(self.ask)
                fut.add_done_callback(lambda f: self.answers.append(f.result()))
                next_at += 1 / self.rate
                time.sleep(max(0.0, next_at - time.monotonic()))

    def stop(self) -> list[Answer]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return list(self.answers)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]
