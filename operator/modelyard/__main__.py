"""`modelyard-operator` / `python -m modelyard`: run the operator with kopf."""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys

import kopf

import modelyard.handlers.model_deployment  # registers the handlers; watch_namespaces is called below


def main(argv: list[str] | None = None) -> int:
    """Run the operator on every namespace, or on the ones given with -n."""
    parser = argparse.ArgumentParser(prog="modelyard-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (--log-level=debug)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning"], default="info",
                        help="info: what the operator does; warning: problems only; debug: every reconcile")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf's liveness endpoint")
    args = parser.parse_args(argv)
    debug = args.verbose or args.log_level == "debug"
    kopf.configure(verbose=debug, quiet=args.log_level == "warning" and not debug)
    modelyard.handlers.model_deployment.watch_namespaces(args.namespace)
    # `kill -USR1 <pid>` writes every thread's stack to stderr (the log): where a reconcile or a watch waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True,
        liveness_endpoint=args.liveness or None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
