"""mrtl.metrics against scikit-image, plus the table helpers."""

import math

import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from mrtl.metrics import (
    data_range_of,
    format_table,
    nrmse,
    paired_difference,
    psnr,
    ssim,
    summarize,
)


def _sk_ssim(recon, ref, data_range):
    return structural_similarity(
        ref, recon, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
    )


def _real_images():
    """Real photographs bundled with scikit-image and the Shepp-Logan head phantom (no downloads)."""
    rgb = skimage.data.astronaut().astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    ims = [
        skimage.data.camera()[100:228, 150:278],
        skimage.data.moon()[200:328, 100:228],
        skimage.data.coins()[50:178, 60:188],
        rgb[50:178, 200:328],
        skimage.data.shepp_logan_phantom()[136:264, 136:264] * 255,
    ]
    return np.stack([np.asarray(im, dtype=np.float64) / 255.0 for im in ims])


def _noisy(ref, sigma, seed):
    rng = np.random.default_rng(seed)
    return ref + sigma * rng.standard_normal(ref.shape)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.5])
def test_ssim_psnr_nrmse_equal_skimage_on_real_images(sigma):
    ref = _real_images()
    recon = _noisy(ref, sigma, seed=0)
    s = ssim(torch.from_numpy(recon), ref=torch.from_numpy(ref))
    p = psnr(torch.from_numpy(recon), ref=torch.from_numpy(ref))
    e = nrmse(torch.from_numpy(recon), ref=torch.from_numpy(ref))
    assert s.shape == p.shape == e.shape == (len(ref),) and s.dtype == torch.float64
    for i in range(len(ref)):
        dr = ref[i].max() - ref[i].min()
        assert abs(float(s[i]) - _sk_ssim(recon[i], ref[i], dr)) < 1e-10
        assert abs(float(p[i]) - peak_signal_noise_ratio(ref[i], recon[i], data_range=dr)) < 1e-10
        assert abs(float(e[i]) - normalized_root_mse(ref[i], recon[i])) < 1e-12


@pytest.mark.parametrize("shape", [(11, 11), (32, 47), (64, 64)])
def test_ssim_equals_skimage_on_random_images(shape):
    rng = np.random.default_rng(1)
    ref = rng.random((4, *shape))
    recon = 0.7 * ref + 0.3 * rng.random((4, *shape)) + 0.1
    s = ssim(recon, ref=ref)  # numpy input accepted
    for i in range(4):
        dr = ref[i].max() - ref[i].min()
        assert abs(float(s[i]) - _sk_ssim(recon[i], ref[i], dr)) < 1e-10


def test_float32_input_within_1e_4_of_skimage():
    ref = _real_images().astype(np.float32)
    recon = _noisy(ref, 0.05, seed=2).astype(np.float32)
    s = ssim(torch.from_numpy(recon), ref=torch.from_numpy(ref), data_range=1.0)
    for i in range(len(ref)):
        assert abs(float(s[i]) - _sk_ssim(recon[i].astype(np.float64), ref[i].astype(np.float64), 1.0)) < 1e-4


def test_complex_inputs_use_magnitudes():
    ref = _real_images()[:3]
    rng = np.random.default_rng(3)
    phase_ref = np.exp(1j * rng.uniform(-np.pi, np.pi, ref.shape))
    phase_rec = np.exp(1j * rng.uniform(-np.pi, np.pi, ref.shape))  # a different phase
    recon_mag = np.abs(_noisy(ref, 0.05, seed=4))
    ref_c = torch.from_numpy(ref * phase_ref).to(torch.complex64)
    recon_c = torch.from_numpy(recon_mag * phase_rec).to(torch.complex64)
    for f in (ssim, psnr, nrmse):
        got = f(recon_c, ref=ref_c)
        want = f(torch.from_numpy(recon_mag), ref=torch.from_numpy(ref))
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    dr = ref[0].max() - ref[0].min()
    assert abs(float(ssim(recon_c, ref=ref_c)[0]) - _sk_ssim(recon_mag[0], ref[0], dr)) < 1e-4


def test_shapes_single_batched_and_channel():
    ref = torch.from_numpy(_real_images()[:2])
    recon = torch.from_numpy(_noisy(ref.numpy(), 0.1, seed=5))
    batched = ssim(recon, ref=ref)
    one = ssim(recon[1], ref=ref[1])
    assert one.ndim == 0
    torch.testing.assert_close(one, batched[1])
    torch.testing.assert_close(ssim(recon[:, None], ref=ref[:, None]), batched)
    torch.testing.assert_close(psnr(recon[:, None], ref=ref[:, None]), psnr(recon, ref=ref))
    assert data_range_of(ref).shape == (2,)
    assert float(data_range_of(ref[0])) == pytest.approx(float(ref[0].max() - ref[0].min()))


def test_data_range_comes_from_the_reference():
    ref = torch.from_numpy(_real_images()[:1])
    recon = 3 * ref + 1  # a wider range in the reconstruction must not change data_range
    dr = float(ref.max() - ref.min())
    assert float(psnr(recon, ref=ref)[0]) == pytest.approx(
        peak_signal_noise_ratio(ref[0].numpy(), recon[0].numpy(), data_range=dr), abs=1e-10
    )
    # explicit data_range: a number or one per image
    p1 = psnr(recon, ref=ref, data_range=2.0)
    assert float(p1[0]) == pytest.approx(peak_signal_noise_ratio(ref[0].numpy(), recon[0].numpy(), data_range=2.0))
    torch.testing.assert_close(psnr(recon, ref=ref, data_range=[2.0]), p1)


def test_psnr_analytic_and_ssim_bounds():
    ref = torch.zeros(1, 16, 16, dtype=torch.float64)
    ref[0, :8] = 1.0  # data range 1
    recon = ref + 0.1  # MSE 0.01 -> PSNR 20 dB
    assert float(psnr(recon, ref=ref)[0]) == pytest.approx(20.0, abs=1e-12)
    assert math.isinf(float(psnr(ref, ref=ref)[0]))
    assert float(ssim(ref, ref=ref)[0]) == pytest.approx(1.0, abs=1e-12)
    assert float(nrmse(ref, ref=ref)[0]) == 0.0
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.random((3, 32, 32)))
    y = torch.from_numpy(rng.random((3, 32, 32)))
    assert bool((ssim(x, ref=y) < 1).all()) and bool((ssim(x, ref=y) > -1).all())
    # symmetric given a fixed data_range (the default takes it from the second argument)
    torch.testing.assert_close(ssim(x, ref=y, data_range=1.0), ssim(y, ref=x, data_range=1.0))


def test_bad_inputs_name_the_argument():
    a = torch.rand(2, 16, 16)
    with pytest.raises(ValueError, match=r"recon: shape \(2, 16, 15\) differs from ref's \(2, 16, 16\)"):
        ssim(torch.rand(2, 16, 15), ref=a)
    bad = a.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="ref: contains 1 NaN/Inf"):
        psnr(a, ref=bad)
    with pytest.raises(ValueError, match="recon: contains 1 NaN/Inf"):
        ssim(bad, ref=a)
    with pytest.raises(ValueError, match="data_range: expected a finite number > 0, got 0.0"):
        psnr(a, ref=a, data_range=0)
    with pytest.raises(ValueError, match="data_range: expected a finite number > 0, got -1.0"):
        ssim(a, ref=a, data_range=-1.0)
    with pytest.raises(ValueError, match="data_range: expected a number or 2 values"):
        ssim(a, ref=a, data_range=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="ref: image 0 is constant"):
        psnr(a, ref=torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match=r"ref: SSIM needs images of at least 11 x 11"):
        ssim(torch.rand(10, 30), ref=torch.rand(10, 30))
    with pytest.raises(ValueError, match=r"recon: a 4-D input must be \(B, 1, H, W\)"):
        ssim(torch.rand(2, 3, 16, 16), ref=torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="recon: expected"):
        psnr(torch.rand(16), ref=torch.rand(16))
    with pytest.raises(TypeError, match="recon: expected a real or complex numeric tensor"):
        psnr(torch.ones(16, 16, dtype=torch.bool), ref=torch.ones(16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="ref: image 0 is all zero"):
        nrmse(a[:1], ref=torch.zeros(1, 16, 16))


def _records():
    rng = np.random.default_rng(7)
    rows = []
    for method, base in [("CS", 30.0), ("TL", 33.0)]:
        for r in (4, 8):
            for i in range(5):
                rows.append({"method": method, "R": r, "image": i,
                             "psnr": base - r / 4 + rng.normal(), "ssim": torch.tensor(0.9 - r / 100 + 0.01 * i)})
    return rows


def test_summarize_mean_std_n():
    rows = _records()
    df = summarize(rows, by=["method", "R"])
    assert list(df.columns) == ["method", "R", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "n"]
    assert len(df) == 4 and (df["n"] == 5).all()
    sel = [r for r in rows if r["method"] == "TL" and r["R"] == 8]
    vals = np.array([r["psnr"] for r in sel])
    got = df[(df["method"] == "TL") & (df["R"] == 8)].iloc[0]
    assert got["psnr_mean"] == pytest.approx(vals.mean())
    assert got["psnr_std"] == pytest.approx(vals.std(ddof=1))  # sample std across images
    ssim_vals = np.array([float(r["ssim"]) for r in sel])
    assert got["ssim_std"] == pytest.approx(ssim_vals.std(ddof=1))
    # population std on request; a DataFrame and a dict of columns work too
    df0 = summarize(pd.DataFrame(rows).assign(ssim=lambda d: d["ssim"].map(float)), by="method",
                    metrics="psnr", ddof=0)
    cs = np.array([r["psnr"] for r in rows if r["method"] == "CS"])
    assert df0.set_index("method").loc["CS", "psnr_std"] == pytest.approx(cs.std(ddof=0))
    dfd = summarize({"method": ["a", "a", "b"], "psnr": torch.tensor([1.0, 3.0, 5.0])}, metrics=["psnr"])
    assert dfd["psnr_mean"].tolist() == [2.0, 5.0]
    assert math.isnan(dfd["psnr_std"].iloc[1])  # one image: no spread


def test_summarize_errors():
    with pytest.raises(ValueError, match="by: column 'dataset' is not in records"):
        summarize(_records(), by=["dataset"])
    with pytest.raises(ValueError, match="metrics: column 'lpips' is not in records"):
        summarize(_records(), metrics=["lpips"])
    with pytest.raises(ValueError, match="records: expected at least one record"):
        summarize([])
    with pytest.raises(ValueError, match="records: column 'psnr' contains NaN"):
        summarize([{"method": "a", "psnr": float("nan"), "ssim": 0.5}])
    with pytest.raises(TypeError, match="records: expected a DataFrame"):
        summarize(3)


def test_format_table_markdown():
    df = summarize(_records(), by=["method", "R"])
    md = format_table(df)
    lines = md.splitlines()
    assert lines[0] == "| method | R | PSNR | SSIM | n |"
    assert lines[1] == "|---|---|---|---|---|"
    assert len(lines) == 2 + 4
    row = df.iloc[0]
    assert lines[2] == (
        f"| {row['method']} | {row['R']} | {row['psnr_mean']:.2f} ± {row['psnr_std']:.2f} | "
        f"{row['ssim_mean']:.4f} ± {row['ssim_std']:.4f} | 5 |"
    )
    with pytest.raises(ValueError, match="df: expected <metric>_mean"):
        format_table(pd.DataFrame({"a": [1]}))


def test_paired_difference():
    rng = np.random.default_rng(8)
    a = rng.normal(30, 3, size=20)
    b = a - 0.5 + rng.normal(0, 0.1, size=20)
    res = paired_difference(torch.from_numpy(a), b.tolist())
    assert res.n == 20
    assert res.mean == pytest.approx(np.mean(a - b))
    assert res.std == pytest.approx(np.std(a - b, ddof=1))
    assert res.std < 0.2 < np.std(a)  # pairing removes the between-image spread
    with pytest.raises(ValueError, match="b: expected 20 values like a"):
        paired_difference(a, b[:5])
    with pytest.raises(ValueError, match="a: contains NaN"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cuda_matches_cpu():
    ref = torch.from_numpy(_real_images()[:2])
    recon = torch.from_numpy(_noisy(ref.numpy(), 0.1, seed=9))
    for f in (ssim, psnr, nrmse):
        got = f(recon.cuda(), ref.cuda())
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), f(recon, ref), atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("shape", [(2, 75, 44), (1, 42, 43), (2, 11, 140)])
def test_ssim_block_filtering_sizes_match_skimage(shape):
    """Sizes whose valid region is not a multiple of the filtering block (and smaller than one)."""
    rng = np.random.default_rng(5)
    ref = rng.random(shape)
    rec = np.abs(ref + 0.2 * rng.standard_normal(shape))
    ours = ssim(torch.from_numpy(rec), ref=torch.from_numpy(ref)).numpy()
    want = [structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                  data_range=float(b.max() - b.min())) for a, b in zip(rec, ref)]
    np.testing.assert_allclose(ours, want, atol=1e-10, rtol=0)


@pytest.mark.parametrize("fn", [psnr, ssim, nrmse])
def test_reference_is_keyword_only(fn):
    """Regression: ``psnr(x, ref)`` took the reverse of scikit-image's ``(image_true, image_test)``
    order, so a swapped call gave a different number silently (the data range is the reference's)."""
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(32, 32, generator=g)
    recon = 3.0 * ref + 0.1 * torch.rand(32, 32, generator=g)
    with pytest.raises(TypeError, match=rf"{fn.__name__}: pass the reference by keyword, {fn.__name__}\(recon, ref=reference\)"):
        fn(ref, recon)
    with pytest.raises(TypeError, match="missing the reference"):
        fn(recon)
    assert torch.isfinite(fn(recon, ref=ref))
