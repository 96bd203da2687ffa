"""mlc-pipeline: collect, curate and version image datasets; train a classifier that knows what it does not know."""

__version__ = "0.3.0"


def lazy_exports(package: str, exports: dict[str, str]):
    """`__getattr__` and `__dir__` for a stage package whose entry points (name -> its module) load on
    first use: importing one module of the package (say, a pure-numpy one) does not pay for the
    others (torch, fastai, matplotlib)."""
    from importlib import import_module

    def __getattr__(name: str):
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__
