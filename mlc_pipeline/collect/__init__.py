"""collect: search a source (Flickr or the bundled server) and download what the catalog still
lacks, with licence filtering, attribution, retries, a call budget and resume.

Modules: stage (the collect run, shortfalls), flickr (the API client), download (validated, atomic
downloads, per-host limits), retry (backoff and rate limiting).
"""

from importlib import import_module

_EXPORTS = {"collect": "stage", "collect_in_rounds": "stage", "shortfalls": "stage", "CollectSummary": "stage",
            "FlickrSource": "flickr", "Downloader": "download"}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    # Entry points load on first use: importing one module of the package (say, a pure-numpy one)
    # does not pay for the others (torch, fastai, matplotlib).
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))

