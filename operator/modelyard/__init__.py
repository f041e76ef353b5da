"""Modelyard: a Kubernetes operator that serves models on NVIDIA Triton Inference Server."""

__version__ = "0.1.0"
