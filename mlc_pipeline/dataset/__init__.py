"""dataset: publish the catalog's accepted images as an immutable, versioned folder dataset
(manifest.csv, ATTRIBUTION.md, a data card, SHA256SUMS), and verify published versions.

The manifest format that readers depend on is mlc_pipeline/manifest.py (core).
"""

from mlc_pipeline import lazy_exports

_EXPORTS = {"build_dataset": "build", "verify_version": "build", "BuildResult": "build", "VersionDamaged": "build"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
