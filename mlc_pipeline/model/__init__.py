"""model: train a multi-label classifier on a dataset version, assess it, predict with it, and
mine hard negatives with it.

Imports point one way: metrics <- bundle <- predict <- assess <- train (and mine, variants above).
A bundle folder (model/bundle.py) is the only contract between training and everything that uses
a model.
"""

from importlib import import_module

_EXPORTS = {"train_model": "train", "TrainConfig": "train", "train_version": "variants",
            "train_alternatives": "variants", "load_bundle": "bundle", "Bundle": "bundle",
            "BundleError": "bundle", "predict_paths": "predict", "evaluate_bundle": "assess",
            "mine_round": "mine", "undo_round": "mine"}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str):
    # Entry points load on first use: importing one module of the package (say, a pure-numpy one)
    # does not pay for the others (torch, fastai, matplotlib).
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))

