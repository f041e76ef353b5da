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
