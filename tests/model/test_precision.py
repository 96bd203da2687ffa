"""model/precision.py: which number format the training batches use, from the CPU's flags."""

from __future__ import annotations

import pytest

from mlc_pipeline.model import precision
from mlc_pipeline.model.options import TrainConfig


def test_precision_auto_is_bfloat16_only_where_the_cpu_has_it(tmp_path, monkeypatch, caplog):
    with_bf16, without = tmp_path / "a", tmp_path / "b"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n")
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n")
    assert precision.cpu_has_native_bf16(str(with_bf16)) is True
    assert precision.cpu_has_native_bf16(str(without)) is False
    assert precision.cpu_has_native_bf16(str(tmp_path / "missing")) is False
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: False)
    for native, auto in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda native=native: native)
        assert precision.training_precision("auto") == auto
        assert precision.training_precision("float32") == "float32"
    assert precision.training_precision("bfloat16") == "bfloat16"   # asked for on a CPU without it: honoured,
    assert "emulated" in caplog.text                                 # with a warning
    monkeypatch.setattr(precision.torch.cuda, "is_available", lambda: True)
    assert [precision.training_precision(c) for c in ("auto", "bfloat16", "float32")] == ["float16", "float16", "float32"]
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")
