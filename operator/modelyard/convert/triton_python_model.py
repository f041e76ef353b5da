"""Triton python-backend model that serves the converted ONNX artifact with onnxruntime on CPU.

Copied as-is into `<model>/1/model.py` of a python-flavoured repository: for Triton builds without the
onnxruntime backend (the CPU tritonserver in the nvidia-pytriton wheel). Production repositories use the
native onnxruntime_onnx platform instead.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests):
        """The requests Triton's dynamic batcher hands over together run as one onnxruntime call: those whose
        inputs agree beyond the batch axis are stacked along it, run once, and the outputs split back."""
        feeds = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        responses = [None] * len(requests)
        groups = {}
        for i, feed in enumerate(feeds):
            key = tuple((feed[n].shape[1:], feed[n].dtype.str) for n in self.inputs) if self.batched else i
            groups.setdefault(key, []).append(i)
        for members in groups.values():
            try:
                if len(members) == 1:
                    results = [self.session.run(self.outputs, feeds[members[0]])]
                else:
                    stacked = {n: np.concatenate([feeds[i][n] for i in members]) for n in self.inputs}
                    joint = self.session.run(self.outputs, stacked)
                    cuts = np.cumsum([len(feeds[i][self.inputs[0]]) for i in members])[:-1]
                    parts = [np.split(out, cuts) for out in joint]
                    results = [[part[k] for part in parts] for k in range(len(members))]
                for i, outs in zip(members, results, strict=True):
                    tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r)) for n, r in zip(self.outputs, outs,
                                                                                           strict=True)]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
            except Exception as exc:  # one bad group answers with an error, the others still run
                for i in members:
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        return responses
