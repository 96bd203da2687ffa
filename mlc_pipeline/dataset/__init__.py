"""dataset: publish the catalog's accepted images as an immutable, versioned folder dataset
(manifest.csv, ATTRIBUTION.md, a data card, SHA256SUMS), and verify published versions.

The manifest format that readers depend on is mlc_pipeline/manifest.py (core).
"""

from importlib import import_module

_EXPORTS = {"build_dataset": "build", "verify_version": "build", "BuildResult": "build", "VersionDamaged": "build"}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    # Entry points load on first use: importing one module of the package (say, a pure-numpy one)
    # does not pay for the others (torch, fastai, matplotlib).
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))

