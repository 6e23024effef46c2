"""The torch.compile option (train.compile, predict.compile): off by default, a wrapper sharing the parameters."""

from __future__ import annotations

import torch

from carvana_seg.models.model import build_model
from carvana_seg.models.runtime import maybe_compile
from carvana_seg.pipeline import config as cfgmod


def test_compile_is_off_by_default_and_shares_the_parameters():
    cfg = cfgmod.resolve(
        {"name": "t", "data": {"source": "synthetic"}, "variants": [{"name": "a", "width": 64, "height": 64}]}
    )
    assert cfg["train"]["compile"] is False and cfg["predict"]["compile"] is False
    model = build_model("Unet", "resnet18", None, "a")
    assert maybe_compile(model, False) is model
    compiled = maybe_compile(model, True)  # lazy: nothing compiles until the first call
    assert compiled is not model and isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    assert all(a is b for a, b in zip(compiled.parameters(), model.parameters()))
    assert set(compiled._orig_mod.state_dict()) == set(model.state_dict())  # checkpoints keep coming from model
