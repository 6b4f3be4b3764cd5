"""Regression tests for defects found in the library review (each failed before its fix)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_train_data

from mrtl.models import Cascade
from mrtl.train import evaluate, finetune, reconstruct

KW = dict(lr=1e-3, batch_size=4, progress_bar=False, device="cpu")


def _tiny(n=8, size=16, seed=0):
    """Smooth random single-coil images, normalized (99th percentile 1), with per-sample masks."""
    return tiny_train_data(n, size, seed)


def test_finetune_without_validation_set_still_updates_the_model():
    """finetune(val_set=None) with the default select_best=True used to keep a NaN epoch-0 "best"
    that no epoch could beat, and so silently restored the pre-fine-tuning weights."""
    tr = _tiny(8, seed=0)
    m = Cascade(2, width=4, depth=1, seed=0)
    before = [t.clone() for t in m.state_dict().values()]
    with torch.no_grad():
        loss0 = float((m(tr.x_u, tr.kspace, tr.mask).abs() - tr.reference.abs()).abs().mean())
    res = finetune(m, tr, None, epochs=3, **KW)
    after = list(m.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    epoch, loss = res["best"]
    assert epoch >= 1 and loss == loss  # a real epoch, finite score
    # the kept epoch is the one with the lowest training loss, and training did lower it
    rows = [h for h in res["history"] if h["epoch"] >= 1]
    assert loss == pytest.approx(min(r["train_loss"] for r in rows))
    with torch.no_grad():
        loss1 = float((m(tr.x_u, tr.kspace, tr.mask).abs() - tr.reference.abs()).abs().mean())
    assert loss1 < loss0


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_reconstruct_and_evaluate_accept_gpu_tensors():
    """reconstruct() mixed CPU scale/output tensors with GPU inputs; evaluate() compared a CPU
    reconstruction with a GPU reference; Cascade.forward used a CPU mask with GPU data."""
    d = _tiny(3, seed=4)
    m = Cascade(2, width=4, depth=1, seed=0)
    ref = reconstruct(m, d.kspace, d.mask, device="cpu")
    for normalize in (True, False):
        out = reconstruct(m, d.kspace.cuda(), d.mask.cuda(), device="cuda", normalize=normalize)
        cpu = reconstruct(m, d.kspace, d.mask, device="cpu", normalize=normalize)
        assert out.device.type == "cpu"
        assert torch.allclose(out, cpu, atol=1e-4 * float(cpu.abs().max()))
    assert torch.allclose(reconstruct(m, d.kspace.cuda(), d.mask.cuda(), device="cuda"), ref, atol=1e-4 * float(ref.abs().max()))
    recs = evaluate(m, d.to("cuda"), device="cuda")
    assert len(recs) == 3
    m.cuda()
    out = m(d.x_u.cuda(), d.kspace.cuda(), d.mask)  # mask left on the CPU
    assert out.is_cuda


def test_sample_size_mismatches_are_value_errors_naming_the_field():
    """A mask or reference whose size differs from the image used to surface as a bare torch
    RuntimeError from deep inside the DC layer / the loss."""
    from mrtl.train import train_sequential

    x = _tiny(4, seed=1)
    good = [dict(zero_filled=x.x_u[i], kspace=x.kspace[i], mask=x.mask[i], reference=x.reference[i], maps=None) for i in range(4)]
    kw = dict(epochs_per_subnet=1, batch_size=2, progress_bar=False, device="cpu")
    bad = [dict(s) for s in good]
    bad[2]["mask"] = torch.ones(16, 18, dtype=torch.bool)
    with pytest.raises(ValueError, match="sample 2 has mask"):
        train_sequential(Cascade(1, width=4, depth=1), bad, **kw)
    bad = [dict(s) for s in good]
    bad[1]["reference"] = x.reference[1][:8]
    with pytest.raises(ValueError, match="sample 1 has reference"):
        train_sequential(Cascade(1, width=4, depth=1), good, bad, **kw)
