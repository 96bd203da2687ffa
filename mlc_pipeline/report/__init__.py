"""report: what a user reads: `mlc inspect` (text), the self-contained HTML report and its model
section, and the tables shared with the Prefect artifacts.
"""

from importlib import import_module

_EXPORTS = {"inspect_main": "inspect", "write_html_report": "inspect", "model_section": "model"}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    # Entry points load on first use: importing one module of the package (say, a pure-numpy one)
    # does not pay for the others (torch, fastai, matplotlib).
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))

