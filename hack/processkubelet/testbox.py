"""The image `modelyard.local/testbox` of the process kubelet's own tests: one small program, several behaviours.

    serve ADDRESS PORT [--ready-file F]   HTTP: /live is 200; /ready is 200 while F exists (always, without F);
                                          /who answers the pod's name ($HOSTNAME), for traffic-split tests;
                                          --fail-percent P: /who fails P% of requests (503), evenly spread;
                                          --delay-ms D: /who answers after D ms
    exit CODE [MESSAGE]                   write MESSAGE to /dev/termination-log (or $TERMINATION_PATH), exit CODE
    sleep [--ignore-term]                 sleep until SIGTERM (or only SIGKILL, with --ignore-term)
    orphan                                start a child that ignores SIGTERM (saying it got one) and print its
                                          pid, then sleep until SIGTERM: the child outlives its parent unless it
                                          is reaped
    write PATH TEXT                       write TEXT to PATH, then sleep until SIGTERM
    put PATH TEXT                         write TEXT to PATH and exit 0 (an init container's work)
"""

from __future__ import annotations

import http.server
import itertools
import os
import signal
import sys
import time


def serve(address: str, port: int, ready_file: str | None, fail_percent: int = 0, delay_ms: int = 0) -> None:
    served = itertools.count()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/who":
                time.sleep(delay_ms / 1000)
                body = os.environ.get("HOSTNAME", "?").encode()
                n = next(served)  # evenly spread: exactly P of every 100, about P% of any stretch
                failing = (n + 1) * fail_percent // 100 > n * fail_percent // 100
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            ok = self.path == "/live" or (self.path == "/ready" and (ready_file is None or os.path.exists(ready_file)))
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok\n" if ok else b"not ready\n")

        def log_message(self, *_: object) -> None:
            pass

    print(f"testbox: serving on {address}:{port}", flush=True)
    http.server.ThreadingHTTPServer((address, port), Handler).serve_forever()


def main(argv: list[str]) -> int:
    cmd, rest = argv[0], argv[1:]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if cmd == "serve":
        def option(name: str) -> str | None:
            return rest[rest.index(name) + 1] if name in rest else None

        serve(rest[0], int(rest[1]), option("--ready-file"), int(option("--fail-percent") or 0),
              int(option("--delay-ms") or 0))
    elif cmd == "exit":
        print(f"testbox: exiting with {rest[0]}", flush=True)
        if len(rest) > 1:
            with open(os.environ.get("TERMINATION_PATH", "/dev/termination-log"), "w") as fh:
                fh.write(rest[1])
        return int(rest[0])
    elif cmd == "put":
        with open(rest[0], "w") as fh:
            fh.write(rest[1])
        return 0
    elif cmd == "orphan":
        child = os.fork()
        if child == 0:  # it says when it gets SIGTERM, and lives on
            signal.signal(signal.SIGTERM, lambda *_: print("testbox: child got SIGTERM", flush=True))
            while True:
                time.sleep(3600)
        print(f"testbox: child {child}", flush=True)
        while True:
            time.sleep(3600)
    elif cmd in ("sleep", "write"):
        if cmd == "write":
            with open(rest[0], "w") as fh:
                fh.write(rest[1])
        if "--ignore-term" in rest:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("testbox: sleeping", flush=True)
        while True:
            time.sleep(3600)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
