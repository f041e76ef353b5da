"""Triton python-backend model that serves a TorchScript artifact (model.pt) with torch on CPU.

The python stand-in for the pytorch_libtorch platform in the local cluster's CPU Triton (see shadow.py).
Inputs and outputs follow Triton's libtorch naming: INPUT__0.., OUTPUT__0.. in config order.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        torch.set_num_threads(1)
        self.model = torch.jit.load(os.path.join(here, "model.pt"), map_location="cpu").eval()
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [o["name"] for o in config["output"]]

    def execute(self, requests):
        responses = []
        for request in requests:
            args = [torch.from_numpy(pb_utils.get_input_tensor_by_name(request, n).as_numpy()) for n in self.inputs]
            with torch.inference_mode():
                result = self.model(*args)
            results = result if isinstance(result, (tuple, list)) else (result,)
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(r.numpy())) for n, r in
                       zip(self.outputs, results, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
