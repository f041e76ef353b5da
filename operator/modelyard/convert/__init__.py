"""The converter: a source model -> a converted, compressed, numerically validated Triton model repository.

Needs the `converter` extra (torch, onnx, onnxruntime, tritonclient). The operator never imports this package
(import-linter enforces it): its image carries no torch.
"""

CONVERTER_VERSION = "0.2.0"
"""Part of every key: a repository converted by an earlier converter (whose manifest lists no file digests) is
converted again, not reused."""
