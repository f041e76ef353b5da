"""TensorFlow's side of a SavedModel conversion, in a process of its own.

TensorFlow and torch each bring an LLVM; in one process they abort ("Option ... registered more than once"). So
the converter never imports TensorFlow: this worker loads the SavedModel, reports its serving signature, and runs
batches on request, over its standard input and output (one JSON line each way, arrays in .npz files).

    python -m modelyard.convert.tfworker DIR
    <- {"signature": {"inputs": [[name, dtype, shape], ...], "outputs": [...]}}    (or {"error": ...})
    -> {"run": "in.npz", "out": "out.npz"}    <- {"ok": true}  (or {"error": ...})
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(directory: str) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(directory)
    except Exception as exc:
        _reply({"error": f"not a SavedModel TensorFlow {tf.__version__} can load: {type(exc).__name__}: "
                         f"{str(exc)[:500]}"})
        return 1
    signatures = dict(loaded.signatures)
    if not signatures:
        _reply({"error": "it has no serving signature: save it with signatures={'serving_default': ...} (or "
                         "Keras's model.export)"})
        return 1
    fn = signatures.get("serving_default") or next(iter(signatures.values()))
    _, specs = fn.structured_input_signature

    def described(items: dict[str, Any]) -> list[list[Any]]:
        return [[name, spec.dtype.name, [-1 if d is None else int(d) for d in spec.shape]]
                for name, spec in items.items()]

    _reply({"signature": {"inputs": described(specs), "outputs": described(fn.structured_outputs)}})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            with np.load(request["run"]) as feed:
                result = fn(**{name: tf.constant(feed[name]) for name in specs})
            np.savez(request["out"], **{name: result[name].numpy() for name in fn.structured_outputs})
            _reply({"ok": True})
        except Exception as exc:
            _reply({"error": f"{type(exc).__name__}: {str(exc)[:500]}"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
