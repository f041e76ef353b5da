"""Conversion failures, each with the reason that the Converted/Validated conditions will carry."""

from __future__ import annotations


class ConversionError(Exception):
    reason = "ConversionFailed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def extend(self, more: str) -> ConversionError:
        """The same error with more said."""
        self.message += more
        self.args = (self.message,)
        return self


class ConversionFailed(ConversionError):
    """The export itself failed (an operator the exporter lacks, say); the message says what and where to go."""

    reason = "ConversionFailed"


class SourceRefused(ConversionError):
    """The source is not something the converter will load (for example a pickled module)."""

    reason = "SourceRefused"


class SourceUnavailable(ConversionError):
    reason = "SourceUnavailable"


class SourceUnreadable(ConversionError):
    """The source was fetched but is not a model of its declared format (truncated, corrupt, another format)."""

    reason = "SourceUnreadable"


class ConversionUnsupported(ConversionError):
    """The target or precision cannot be produced here (for example TensorRT without a GPU)."""

    reason = "ConversionUnsupported"


class ValidationFailed(ConversionError):
    reason = "ValidationFailed"


class ValidationInconclusive(ConversionError):
    """The samples cannot tell a right conversion from a wrong one (the source's output hardly varies, or every
    sample lands in one class), so the gate does not pass it."""

    reason = "ValidationInconclusive"


# --- a Hugging Face checkpoint refused before anything serves it: each its own reason ----------------------------


class PickledWeights(SourceRefused):
    """Weights in pickle files (.bin, .pt, .pth, .ckpt, .pkl): loading them can run code."""

    reason = "PickledWeights"


class CustomCode(SourceRefused):
    """config.json's auto_map (or Python files in the checkpoint): the model would be its own code."""

    reason = "CustomCode"


class TokenizerUnusable(SourceRefused):
    """No tokenizer in the checkpoint, or one that does not load or round-trip the prompts."""

    reason = "TokenizerUnusable"


class ArchitectureUnsupported(ConversionUnsupported):
    """config.json names an architecture the engine does not serve."""

    reason = "ArchitectureUnsupported"


class WeightsCorrupt(SourceUnreadable):
    """A safetensors file whose header disagrees with the file (sizes, offsets), or a shard index naming what is
    not there."""

    reason = "WeightsCorrupt"
