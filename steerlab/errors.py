"""Errors steerlab raises for bad input. Each names the problem in one line a user can act on."""

from __future__ import annotations


class SteerlabError(Exception):
    """Base class: an error caused by the user's input or environment, not a bug in steerlab."""


class ModelLoadError(SteerlabError):
    """A model or tokenizer could not be loaded or located."""


class LayerError(SteerlabError):
    """A layer index is unknown, out of range, or the decoder blocks cannot be found."""


class DatasetError(SteerlabError):
    """A dataset file or record is malformed, empty, or missing fields."""


class VectorError(SteerlabError):
    """A steering vector is malformed (NaN/inf, wrong shape) or does not fit the model."""


class PromptTooLongError(SteerlabError):
    """A prompt does not fit the model's context window."""


class OutputExistsError(SteerlabError):
    """Refusing to overwrite a file the user saved earlier (pass force/--force to overwrite)."""
