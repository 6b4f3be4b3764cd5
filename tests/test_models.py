"""Tests of mrtl.models: DC (Eq. 7-9, 16) and CC (Eq. 13, 17) layers, subnetworks, the cascade
(Eq. 10, 14). References: explicit centred DFT matrices built in numpy (independent of
mrtl.fft), autograd's gradcheck, torch's FlopCounterMode, and properties (idempotence, fixed
points)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrtl.fft import fft2c, ifft2c
from mrtl.models import (
    CalibrationConsistency,
    Cascade,
    ConvSubnet,
    DataConsistency,
    UNetSubnet,
    conv_flops,
)


def rand_c(*shape, seed=0, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def rand_mask(shape, frac=0.35, seed=0):
    g = torch.Generator().manual_seed(seed + 100)
    m = torch.rand(*shape, generator=g) < frac
    m[..., shape[-2] // 2, shape[-1] // 2] = True
    return m


def dft_matrix(n):
    """Centred orthonormal DFT matrix (DC at n // 2), built from the definition."""
    idx = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(idx, idx) / n) / np.sqrt(n)


def fft2_np(x):
    """Centred 2D DFT of the last two axes via explicit matrices."""
    H, W = x.shape[-2:]
    return dft_matrix(H) @ x @ dft_matrix(W).T


def ifft2_np(k):
    H, W = k.shape[-2:]
    return dft_matrix(H).conj().T @ k @ dft_matrix(W).conj()


# -- DataConsistency ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8, 8), (3, 7, 9)])
def test_dft_reference_matches_fft2c(shape):
    x = rand_c(*shape)
    np.testing.assert_allclose(fft2c(x).numpy(), fft2_np(x.numpy()), atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 3, 7, 9)])
def test_hard_dc_idempotent_and_matches_measurement(shape):
    x_true = rand_c(*shape, seed=1, dtype=torch.complex64)
    mask = rand_mask((shape[0],) + shape[-2:])
    m = mask if len(shape) == 3 else mask[:, None]
    y = fft2c(x_true) * m
    x = rand_c(*shape, seed=2, dtype=torch.complex64)
    dc = DataConsistency()
    once = dc(x, y, mask)
    twice = dc(once, y, mask)
    assert torch.allclose(once, twice, atol=1e-6)
    k = fft2c(once)
    mm = m.expand_as(k)
    assert (k[mm] - y[mm]).abs().max() < 1e-6
    # unsampled k-space is the input's
    assert (k[~mm] - fft2c(x)[~mm]).abs().max() < 1e-5


@pytest.mark.parametrize("lam", [None, 0.5, 4.0])
def test_dc_equals_eq8_with_explicit_dft(lam):
    """f_DC(x) = F^-1 Lambda F x + lam/(1+lam) F^-1 y (Eq. 8-9), explicit DFT matrices."""
    x = rand_c(2, 6, 5, seed=3)
    mask = rand_mask((2, 6, 5))
    y = (fft2c(rand_c(2, 6, 5, seed=4)) * mask)
    out = DataConsistency(lam)(x, y, mask).numpy()
    Fx = fft2_np(x.numpy())
    if lam is None:
        ref = ifft2_np(np.where(mask.numpy(), y.numpy(), Fx))
    else:
        Lam = np.where(mask.numpy(), 1 / (1 + lam), 1.0)
        ref = ifft2_np(Lam * Fx) + lam / (1 + lam) * ifft2_np(y.numpy())
    np.testing.assert_allclose(out, ref, atol=1e-10)


@pytest.mark.parametrize("lam", [None, 2.0])
def test_dc_gradcheck_and_jacobian_is_FinvLambdaF(lam):
    """Eq. 16: the Jacobian of DC is F^-1 Lambda F (checked by gradcheck and by a JVP)."""
    x = rand_c(1, 5, 6, seed=5).requires_grad_(True)
    mask = rand_mask((1, 5, 6))
    y = fft2c(rand_c(1, 5, 6, seed=6)) * mask
    dc = DataConsistency(lam).double()
    assert torch.autograd.gradcheck(lambda t: dc(t, y, mask), (x,), eps=1e-6, atol=1e-6)
    v = rand_c(1, 5, 6, seed=7)
    _, jvp = torch.func.jvp(lambda t: dc(t, y, mask), (x.detach(),), (v,))
    Lam = np.where(mask.numpy(), 0.0 if lam is None else 1 / (1 + lam), 1.0)
    ref = ifft2_np(Lam * fft2_np(v.numpy()))
    np.testing.assert_allclose(jvp.numpy(), ref, atol=1e-10)


def test_dc_multicoil_through_maps_fixed_point():
    """A consistent image is a fixed point of image -> coils -> DC -> combine (maps with
    sum_c |S_c|^2 = 1)."""
    B, C, H, W = 2, 4, 8, 8
    maps = rand_c(C, H, W, seed=8, dtype=torch.complex64)
    maps = maps / (maps.abs() ** 2).sum(0, keepdim=True).sqrt()
    x = rand_c(B, H, W, seed=9, dtype=torch.complex64)
    mask = rand_mask((B, H, W))
    y = fft2c(x[:, None] * maps) * mask[:, None]
    out = DataConsistency()(x, y, mask, maps=maps)
    assert out.shape == (B, H, W)
    assert torch.allclose(out, x, atol=1e-5)
    # and an inconsistent image moves towards the data
    x2 = x + 0.5 * rand_c(B, H, W, seed=10, dtype=torch.complex64)
    out2 = DataConsistency()(x2, y, mask, maps=maps)
    assert (out2 - x).norm() < (x2 - x).norm()


def test_learned_lambda_gets_gradient():
    dc = DataConsistency(1.0, learn_lam=True)
    assert isinstance(dc.log_lam, torch.nn.Parameter)
    x = rand_c(1, 6, 6, dtype=torch.complex64)
    mask = rand_mask((1, 6, 6))
    y = fft2c(rand_c(1, 6, 6, seed=3, dtype=torch.complex64)) * mask
    dc(x, y, mask).abs().sum().backward()
    assert dc.log_lam.grad is not None and dc.log_lam.grad.abs() > 0


def test_dc_errors():
    x = rand_c(1, 6, 6, dtype=torch.complex64)
    mask = rand_mask((1, 6, 6))
    y = fft2c(x) * mask
    with pytest.raises(ValueError, match="learn_lam"):
        DataConsistency(None, learn_lam=True)
    with pytest.raises(ValueError, match="lam"):
        DataConsistency(-1.0)
    bad = x.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="x: contains"):
        DataConsistency()(bad, y, mask)
    with pytest.raises(ValueError, match="mask"):
        DataConsistency()(x, y, mask[:, :5])
    with pytest.raises(TypeError, match="x"):
        DataConsistency()(x.real, y, mask)


# -- CalibrationConsistency --------------------------------------------------------------------


def test_cc_is_per_pixel_coil_mixing_and_gradcheck():
    """f_CC x = G_img x (Eq. 13) and DC(CC(.)) has Jacobian F^-1 Lambda F G_img (Eq. 17)."""
    B, C, H, W = 1, 2, 4, 5
    G = rand_c(C, C, H, W, seed=11) * 0.3
    x = rand_c(B, C, H, W, seed=12)
    cc = CalibrationConsistency(G)
    out = cc(x).numpy()
    ref = np.zeros_like(out)
    for c in range(C):
        for d in range(C):
            ref[:, c] += G[c, d].numpy() * x[:, d].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-12)
    # batched G
    Gb = torch.stack([G, 2 * G])
    xb = torch.cat([x, x])
    outb = CalibrationConsistency()(xb, Gb)
    assert torch.allclose(outb[1], 2 * outb[0])

    mask = rand_mask((B, H, W))
    y = fft2c(rand_c(B, C, H, W, seed=13)) * mask[:, None]
    dc = DataConsistency()
    f = lambda t: dc(cc(t), y, mask)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    v = rand_c(B, C, H, W, seed=14)
    _, jvp = torch.func.jvp(f, (x,), (v,))
    Lam = np.where(mask.numpy()[:, None], 0.0, 1.0)
    Gv = np.einsum("cdhw,bdhw->bchw", G.numpy(), v.numpy())
    np.testing.assert_allclose(jvp.numpy(), ifft2_np(Lam * fft2_np(Gv)), atol=1e-10)


def test_cc_errors():
    with pytest.raises(ValueError, match="G_img"):
        CalibrationConsistency(rand_c(3, 2, 4, 4))
    cc = CalibrationConsistency(rand_c(3, 3, 4, 4))
    with pytest.raises(ValueError, match="G_img"):
        cc(rand_c(1, 2, 4, 4))
    with pytest.raises(ValueError, match="G_img"):
        CalibrationConsistency()(rand_c(1, 3, 4, 4))


def test_cc_is_the_one_spirit_operator():
    """f_CC and recon's spirit_apply are one implementation (mrtl.linops.spirit_apply), checked
    against an explicit einsum for single and batched G; the Spirit operator's adjoint is the
    conjugate-transposed mixing."""
    from helpers import check_adjoint

    import mrtl.linops as L
    import mrtl.models as M
    import mrtl.recon as R

    assert M.calibration_consistency is L.spirit_apply and R.spirit_apply is L.spirit_apply
    G = rand_c(3, 3, 6, 6, seed=15, dtype=torch.complex64)
    x = rand_c(2, 3, 6, 6, seed=16, dtype=torch.complex64)
    torch.testing.assert_close(CalibrationConsistency(G)(x), torch.einsum("cdhw,bdhw->bchw", G, x))
    Gb = rand_c(2, 3, 3, 6, 6, seed=17, dtype=torch.complex64)
    torch.testing.assert_close(CalibrationConsistency()(x, Gb), torch.einsum("bcdhw,bdhw->bchw", Gb, x))
    check_adjoint(L.Spirit(G.to(torch.complex128)), (2, 3, 6, 6))


def test_sense_helpers_are_the_validated_linops_versions():
    import mrtl.linops as L
    import mrtl.models as M

    assert M.sense_expand is L.sense_expand and M.coil_combine is L.coil_combine
    with pytest.raises(ValueError, match="maps"):
        M.sense_expand(rand_c(2, 8, 8), rand_c(4, 8, 6))


@pytest.mark.parametrize("lam", [None, 0.3, 2.0])
@pytest.mark.parametrize("kind", ["single", "coil images", "maps"])
def test_dc_equals_fourier_operator_prox_l2(lam, kind):
    """DataConsistency (and data_consistency) is A.prox_l2 of the undersampled Fourier
    operator: A = M F (single-coil and coil images), A = M F S through maps; hard and soft."""
    from mrtl.linops import MultiCoilFourier, SingleCoilFourier
    from mrtl.models import data_consistency

    B, C, H, W = 2, 4, 8, 10
    mask = rand_mask((B, H, W), seed=3)
    maps = rand_c(C, H, W, seed=4)
    if kind == "single":
        A, x = SingleCoilFourier(mask), rand_c(B, H, W, seed=5)
    elif kind == "coil images":
        A, x = MultiCoilFourier(mask), rand_c(B, C, H, W, seed=5)
    else:
        A, x = MultiCoilFourier(mask, maps), rand_c(B, H, W, seed=5)
    y = A(rand_c(*x.shape, seed=6))
    dc = DataConsistency(lam)
    out = dc(x, y, mask, maps if kind == "maps" else None)
    lam = None if lam is None else float(dc.lam)  # the layer keeps log(lambda) in float32
    torch.testing.assert_close(out, A.prox_l2(x, y, lam), atol=1e-12, rtol=0)
    if kind != "maps":
        torch.testing.assert_close(data_consistency(x, y, mask, lam), A.prox_l2(x, y, lam), atol=1e-12, rtol=0)
    # and Eq. 8-9 with explicit DFT matrices (independent of mrtl.fft)
    m = mask.numpy()[:, None] if kind != "single" else mask.numpy()
    xc = x.numpy()[:, None] * maps.numpy() if kind == "maps" else x.numpy()
    k = fft2_np(xc)
    yn = y.numpy()
    k = np.where(m, yn if lam is None else (k + lam * yn) / (1 + lam), k)
    ref = ifft2_np(k)
    if kind == "maps":
        ref = (np.conj(maps.numpy()) * ref).sum(1)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)


# -- subnetworks --------------------------------------------------------------------------------


@pytest.mark.parametrize("width,depth", [(64, 4), (8, 2)])
def test_convsubnet_structure(width, depth):
    net = ConvSubnet(2, 1, width, depth)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    relus = [m for m in net.modules() if isinstance(m, torch.nn.ReLU)]
    assert len(convs) == depth + 2 and len(relus) == depth + 1
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert convs[0].in_channels == 2 and convs[-1].out_channels == 1
    n = sum(p.numel() for p in net.parameters())
    assert n == (2 * width * 9 + width) + depth * (width * width * 9 + width) + (width * 9 + 1)
    assert net(torch.randn(3, 2, 10, 12)).shape == (3, 1, 10, 12)


@pytest.mark.parametrize("size", [(16, 16), (15, 22)])
def test_unet_same_interface(size):
    net = UNetSubnet(2, 1, width=4, depth=2)
    assert net(torch.randn(2, 2, *size)).shape == (2, 1, *size)


def test_conv_flops_matches_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    for model in (Cascade(2, width=8, depth=2), Cascade(1, width=4, depth=2, subnet="unet")):
        x = torch.randn(1, 2, 16, 16)
        with FlopCounterMode(display=False) as fc:
            for blk in model.subnets:
                blk.net(x)
        assert conv_flops(model, 16, 16) == fc.get_total_flops()


# -- cascade ------------------------------------------------------------------------------------


def _single_data(B=2, H=12, W=12, seed=0):
    x = rand_c(B, H, W, seed=seed, dtype=torch.complex64).real.to(torch.complex64)
    mask = rand_mask((B, H, W), seed=seed)
    y = fft2c(x) * mask
    return ifft2c(y), y, mask, x


def test_cascade_single_eq10_composition():
    x_u, y, mask, _ = _single_data()
    model = Cascade(3, "single", width=6, depth=1, seed=0)
    out = model(x_u, y, mask)
    # Eq. 10 by hand: x_{i,p+1} = f_DC(C_p(x_ip)), C_p outputs a real magnitude image
    dc = DataConsistency()
    x = x_u
    for blk in model.subnets:
        r = blk.net(torch.stack((x.real, x.imag), 1))[:, 0] + x.abs()
        x = dc(r.to(torch.complex64), y, mask)
    assert torch.allclose(out, x, atol=1e-5)
    k = fft2c(out)
    assert (k[mask] - y[mask]).abs().max() < 1e-5
    assert torch.equal(model(x_u, y, mask, upto=0), x_u)
    s1 = model.forward_stage(1, x_u, y, mask)
    assert torch.allclose(model.forward_stage(2, s1, y, mask), model(x_u, y, mask, upto=2), atol=1e-6)


def test_cascade_seed_reproducible_and_configurable():
    a, b = Cascade(2, width=4, depth=1, seed=3), Cascade(2, width=4, depth=1, seed=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    assert a.config() == dict(n_subnets=2, coils="single", width=4, depth=1, subnet="conv", dc_lam=None, learn_lam=False, residual=True)
    with pytest.raises(ValueError, match="coils"):
        Cascade(coils="dual")
    with pytest.raises(ValueError, match="subnet"):
        Cascade(subnet="resnet")
    with pytest.raises(ValueError, match="n_subnets"):
        Cascade(0)


def test_cascade_multicoil_eq14():
    B, C, H, W = 2, 3, 10, 10
    maps = rand_c(C, H, W, seed=20, dtype=torch.complex64)
    maps = maps / (maps.abs() ** 2).sum(0, keepdim=True).sqrt()
    x = rand_c(B, H, W, seed=21, dtype=torch.complex64)
    mask = rand_mask((B, H, W))
    y = fft2c(x[:, None] * maps) * mask[:, None]
    x_u = (maps.conj() * ifft2c(y)).sum(1)
    G = 0.2 * rand_c(C, C, H, W, seed=22, dtype=torch.complex64)
    for subnet in ("conv", "unet"):
        model = Cascade(2, "multi", width=4, depth=1, subnet=subnet, seed=1)
        assert len(list(model.subnets[0].children())) == 2  # separate real and imaginary subnetworks
        out = model(x_u, y, mask, maps=maps, G_img=G)
        assert out.shape == (B, H, W) and out.dtype == torch.complex64
        # Eq. 14 by hand: z = DC(CC(u)), u = DC(S C(S^H z)), output S^H u_P
        dc = DataConsistency()
        u = ifft2c(y)
        for blk in model.subnets:
            z = dc(torch.einsum("cdhw,bdhw->bchw", G, u), y, mask)
            c = blk((maps.conj() * z).sum(1))
            u = dc(c[:, None] * maps, y, mask)
        assert torch.allclose(out, (maps.conj() * u).sum(1), atol=1e-5)
        # final coil images are data consistent
        uP = model.prefix(x_u, y, mask, maps=maps, G_img=G)
        kk = fft2c(uP)
        mm = mask[:, None].expand_as(kk)
        assert (kk[mm] - y[mm]).abs().max() < 1e-5


def test_cascade_errors():
    x_u, y, mask, _ = _single_data()
    model = Cascade(2, width=4, depth=1)
    with pytest.raises(ValueError, match="maps"):
        model(x_u, y, mask, maps=torch.ones(2, 12, 12, dtype=torch.complex64))
    bad = x_u.clone()
    bad[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="x_u"):
        model(bad, y, mask)
    with pytest.raises(ValueError, match="upto"):
        model(x_u, y, mask, upto=5)
    mc = Cascade(1, "multi", width=4, depth=1)
    with pytest.raises(ValueError, match="maps"):
        mc(x_u, y[:, None], mask)


def test_cascade_end_to_end_gradients_reach_every_subnet():
    x_u, y, mask, x = _single_data()
    model = Cascade(3, width=4, depth=1, seed=0)
    loss = (model(x_u, y, mask).abs() - x.abs()).pow(2).mean()
    loss.backward()
    for blk in model.subnets:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in blk.parameters())
