"""curate: verify every downloaded file, quarantine bad ones with a reason, and drop exact and
confirmed near-duplicates (within and across sets and published test splits); takedowns.

Modules: stage (the curate run), decide (duplicate decisions across purposes and tests), verify (decoding checks), hashing (content and perceptual hashes),
neardup (candidate pairs by Hamming distance), similarity (the second signal that confirms a pair),
dedup (groups without chains), takedown (`mlc remove`).
"""

from mlc_pipeline import lazy_exports

_EXPORTS = {"curate": "stage", "CurateSummary": "stage", "remove_photos": "takedown"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
