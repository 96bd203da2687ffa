"""model: train a multi-label classifier on a dataset version, assess it, predict with it, and
mine hard negatives with it.

Imports point one way: metrics <- bundle <- predict <- assess <- train (and mine, stage above).
A bundle folder (model/bundle.py) is the only contract between training and everything that uses
a model.
"""

import warnings

from mlc_pipeline import lazy_exports

# fastai.layers applies torch.jit.script when imported, which torch (2.14 here) warns is deprecated:
# not ours to fix, and it printed two lines on every `mlc train`, `mine` and `predict`.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)

_EXPORTS = {"train_model": "train", "TrainConfig": "options", "train_version": "stage",
            "train_alternatives": "stage", "load_bundle": "bundle", "Bundle": "bundle",
            "BundleError": "bundle", "predict_paths": "predict", "evaluate_bundle": "assess",
            "mine_round": "mine", "undo_round": "mine"}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
