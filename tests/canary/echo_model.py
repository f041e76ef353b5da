"""A Triton python-backend model that answers who it is, and misbehaves as its config.pbtxt parameters say.

Parameters (string values): identity (returned in output WHO and in every error), fail_percent (that share of
requests ends in an error: HTTP 500 at the client), delay_ms (each request sleeps that long first), crash_after
(the N-th request kills the whole server: the container exits and restarts). Written next to a config.pbtxt by
tests/canary/repositories.py; the local cluster's Triton runs it as it is (python backend).
"""

import json
import os
import random
import signal
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = {k: v["string_value"] for k, v in json.loads(args["model_config"]).get("parameters", {}).items()}
        self.identity = params.get("identity", "unknown")
        self.fail = float(params.get("fail_percent", "0"))
        self.delay = float(params.get("delay_ms", "0")) / 1000
        self.crash_after = int(params.get("crash_after", "0"))
        self.count = 0
        self.rng = random.Random()

    def execute(self, requests):
        responses = []
        for request in requests:
            self.count += 1
            if self.crash_after and self.count >= self.crash_after:
                os.kill(os.getppid(), signal.SIGKILL)  # the parent of the python stub is tritonserver
            if self.delay:
                time.sleep(self.delay)
            if self.rng.random() * 100 < self.fail:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{self.identity}: injected failure")))
                continue
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            who = np.array([[self.identity.encode()]] * x.shape[0], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("Y", x), pb_utils.Tensor("WHO", who)]))
        return responses
