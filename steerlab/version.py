"""The steerlab version (recorded in every vector file it writes)."""

__version__ = "0.1.0"
