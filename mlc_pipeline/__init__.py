"""mlc-pipeline: collect, curate and version image datasets; train a classifier that knows what it does not know."""

__version__ = "0.2.0"
