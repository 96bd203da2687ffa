"""curate: verify every downloaded file, quarantine bad ones with a reason, and drop exact and
confirmed near-duplicates (within and across sets and published test splits); takedowns.

Modules: stage (the curate run), verify (decoding checks), hashing (content and perceptual hashes),
neardup (candidate pairs by Hamming distance), similarity (the second signal that confirms a pair),
dedup (groups without chains), takedown (`mlc remove`).
"""

from importlib import import_module

_EXPORTS = {"curate": "stage", "CurateSummary": "stage", "remove_photos": "takedown"}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    # Entry points load on first use: importing one module of the package (say, a pure-numpy one)
    # does not pay for the others (torch, fastai, matplotlib).
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))

