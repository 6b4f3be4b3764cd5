"""Tests of mrtl.peft: parameter counts against a hand count from the module structure, frozen
parameters bit-identical after fine-tuning, the hard-DC rule."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_train_data

from mrtl.models import Cascade
from mrtl.peft import finetune_peft, make_dc_learnable, parameters_of, select_parameters, trainable_count
from mrtl.train import load_model, save_model


def _conv(cin, cout):
    return cin * cout * 9 + cout  # 3x3 kernel + bias


@pytest.mark.parametrize("coils", ["single", "multi"])
def test_counts_match_a_hand_count(coils):
    P, w, d = 3, 8, 2
    model = Cascade(P, coils=coils, width=w, depth=d, seed=0)
    nets = P * (1 if coils == "single" else 2)  # multi-coil: a real and an imaginary network per subnetwork
    per_net = _conv(2, w) + d * _conv(w, w) + _conv(w, 1)
    assert select_parameters(model, "all") == nets * per_net == trainable_count(model)
    assert select_parameters(model, "last") == nets * _conv(w, 1)
    assert select_parameters(model, "norm_bias") == nets * (w + d * w + 1)
    assert trainable_count(model) == nets * (w + d * w + 1)
    with pytest.raises(ValueError, match="make_dc_learnable"):
        select_parameters(model, "dc")
    make_dc_learnable(model, lam=100.0)
    assert select_parameters(model, "dc") == P
    with pytest.raises(ValueError, match="which"):
        select_parameters(model, "first")


def test_learnable_dc_round_trips_and_is_close_to_hard_dc(tmp_path):
    td = tiny_train_data(n=2, size=16)
    model = Cascade(2, width=4, depth=1, seed=0)
    with torch.no_grad():
        hard = model(td.x_u, td.kspace, td.mask)
    make_dc_learnable(model, lam=1e4)
    with torch.no_grad():
        soft = model(td.x_u, td.kspace, td.mask)
    assert float((soft - hard).abs().max()) < 1e-2 * float(hard.abs().max())
    save_model(model, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.arch["learn_lam"] and len(parameters_of(back, "dc")) == 2


@pytest.mark.parametrize("which", ["last", "norm_bias", "dc"])
def test_frozen_parameters_do_not_change(which):
    td = tiny_train_data(n=6, size=16, seed=0)
    model = Cascade(2, width=4, depth=1, seed=0)
    if which == "dc":
        make_dc_learnable(model, lam=10.0)
    chosen = {id(p) for p in parameters_of(model, which)}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = {n for n, p in model.named_parameters() if id(p) in chosen}
    model, h = finetune_peft(model, td, which, epochs=3, lr=1e-2, batch_size=2, seed=0)
    assert h["trainable"] == sum(before[n].numel() for n in names) < h["total"]
    changed = False
    for n, p in model.named_parameters():
        if n in names:
            changed |= not torch.equal(p, before[n])
        else:
            assert torch.equal(p, before[n]), n
    assert changed  # without validation the best training-loss epoch (>= 1) is kept
