"""planet-pipeline's domain library: plain functions and classes, no orchestration imports."""

__version__ = "0.1.0"
