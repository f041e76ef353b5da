"""The converter: a source model -> a converted, compressed, numerically validated Triton model repository.

Needs the `converter` extra (torch, onnx, onnxruntime, tritonclient). The operator never imports this package
(import-linter enforces it): its image carries no torch.
"""

CONVERTER_VERSION = "0.4.0"
"""Part of every key: a repository converted by an earlier converter is converted again, not reused (0.2.0: the
manifest lists every file's digest; 0.3.0: dynamic int8 with 7-bit weights, and huggingface checkpoints)."""
