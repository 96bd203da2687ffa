"""collect: search a source (Flickr or the bundled server) and download what the catalog still
lacks, with licence filtering, attribution, retries, a call budget and resume.

Modules: stage (the collect run), sets (the sets to fill, how short each is), licences (source.licenses
when a run resumes), flickr (the API client), download (validated, atomic
downloads, per-host limits), retry (backoff and rate limiting).
"""

from mlc_pipeline import lazy_exports

_EXPORTS = {"collect": "stage", "collect_in_rounds": "stage", "shortfalls": "sets", "CollectSummary": "stage",
            "FlickrSource": "flickr", "Downloader": "download"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
