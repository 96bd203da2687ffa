"""report: what a user reads: `mlc inspect` (text), the self-contained HTML report and its model
section, and the tables shared with the Prefect artifacts.
"""

from mlc_pipeline import lazy_exports

_EXPORTS = {"inspect_main": "inspect", "write_html_report": "inspect", "model_section": "model"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
