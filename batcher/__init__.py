"""batcher: run Claude's vision over large image sets, exactly once per row."""

__version__ = "0.1.0"
