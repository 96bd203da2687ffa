"""Session-wide settings that keep every test hermetic.

`train.arch` and `train.pretrained` default to `auto`, which looks for torchvision's ImageNet weights
in $TORCH_HOME and downloads them when it can. Tests must neither depend on what a developer's cache
holds nor download anything (CI may have internet): an empty TORCH_HOME and MLC_OFFLINE=1 for the
whole session, inherited by subprocesses. tests/test_weights.py lifts them where it tests exactly that.
"""

import atexit
import os
import shutil
import tempfile

_torch_home = tempfile.mkdtemp(prefix="mlc-test-torch-home-")
atexit.register(shutil.rmtree, _torch_home, ignore_errors=True)
os.environ["TORCH_HOME"] = _torch_home
os.environ["MLC_OFFLINE"] = "1"
