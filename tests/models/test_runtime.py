"""Mixed precision on a CPU: bf16 autocast only where the CPU computes bf16 natively, and only when asked."""

from __future__ import annotations

import pytest
import torch

from carvana_seg.models import runtime


def test_mixed_precision_follows_the_device_and_the_keys(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.mixed_precision(cuda, amp=True, amp_cpu=False)
    assert not runtime.mixed_precision(cuda, amp=False, amp_cpu=True)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.mixed_precision(cpu, amp=False, amp_cpu=True)
    assert not runtime.mixed_precision(cpu, amp=True, amp_cpu=False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert not runtime.mixed_precision(cpu, amp=True, amp_cpu=True)


def test_cpu_autocast_computes_convolutions_in_bf16():
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(1, 3, 8, 8)
    with runtime.autocast(torch.device("cpu"), True):
        assert conv(x).dtype == torch.bfloat16
    with runtime.autocast(torch.device("cpu"), False):
        assert conv(x).dtype == torch.float32


@pytest.mark.skipif(not runtime.cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_training_step_on_cpu_lowers_the_loss():
    from carvana_seg.training.loop import train_step
    from carvana_seg.training.losses import BceDiceLoss

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 1, 1))
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 16, 16)
    y = (x[:, :1] > 0.5).float()
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = [train_step(model, x, y, BceDiceLoss(), opt, scaler, torch.device("cpu"), True, True) for _ in range(30)]
    assert all(loss is not None for loss in losses)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
