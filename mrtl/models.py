"""The reconstruction network: data-consistency (DC) and calibration-consistency (CC) layers,
convolutional subnetworks and the cascade of Dar, Özbey & Çukur (MRM 2020), Methods,
"MRI Reconstruction via Neural Networks" and "Network training".

Conventions (see CONTRIBUTING.md): complex images ``(B, H, W)`` (single-coil) or coil images
``(B, C, H, W)`` (multi-coil), ``torch.complex64`` (complex128 accepted); masks ``bool``,
``(H, W)`` or ``(B, H, W)``, centred like :func:`mrtl.fft.fft2c`, broadcast over coils.

The cascade as implemented (P subnetworks, ``p = 1..P`` as in the paper):

* single-coil (Eq. 10): ``u_0 = x_u``; ``u_p = f_DC(C_p(u_{p-1}))``; output ``u_P``.
* multi-coil (Eq. 14): ``u_0 = F^-1 M y`` (zero-filled coil images);
  ``z_p = f_DC(f_CC(u_{p-1}))`` (the input of subnetwork p lives in coil space),
  ``u_p = f_DC(S C_p(S^H z_p))`` (the subnetwork sees the coil-combined image and its output is
  expanded to coils with the maps S before DC); output ``S^H u_P``. This reads Eq. 14 literally:
  ``x_i1 = f_DC(f_CC(x_u))`` and ``x_ip = f_DC(f_CC(f_DC(C_{p-1}(x_i,p-1))))``, so a cascade of
  P subnetworks holds P CC projections (the paper: "5 consecutive CC projections"), and the last
  subnetwork is followed by DC only.

One *stage* ``p`` is therefore ``[CC -> DC ->] C_p -> DC`` (CC only for multi-coil), and the
stage's state ``u_p`` is what sequential training (Eq. 11) caches for the frozen prefix.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_choice, check_complex, check_float, check_int, check_mask
from .linops import MultiCoilFourier, Sense, SingleCoilFourier, coil_combine, sense_expand
from .linops import spirit_apply as calibration_consistency

__all__ = [
    "DataConsistency",
    "CalibrationConsistency",
    "ConvSubnet",
    "UNetSubnet",
    "ComplexSubnet",
    "MagnitudeSubnet",
    "Cascade",
    "data_consistency",
    "calibration_consistency",
    "sense_expand",
    "coil_combine",
    "complex_to_channels",
    "conv_flops",
]


# ----------------------------------------------------------------------------------------------
# small helpers


# ``sense_expand`` (S x), ``coil_combine`` (S^H x) and ``calibration_consistency`` (f_CC, Eq. 13,
# the SPIRiT operator in image space) are the operator layer's: :mod:`mrtl.linops`.


def complex_to_channels(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` complex -> ``(B, 2, H, W)`` real (real, imaginary) network input."""
    return torch.stack((x.real, x.imag), dim=1)


def _fourier(mask: torch.Tensor, x: torch.Tensor, maps=None):
    """The undersampled Fourier operator for ``x`` (unchecked): ``M F`` for single-coil images
    ``(B, H, W)``, ``M F`` per coil for coil images ``(B, C, H, W)``, ``M F S`` with maps."""
    if maps is not None or x.ndim == 4:
        return MultiCoilFourier(mask, maps, validate=False)
    return SingleCoilFourier(mask, validate=False)


def data_consistency(x: torch.Tensor, kspace: torch.Tensor, mask: torch.Tensor, lam=None) -> torch.Tensor:
    """Unvalidated DC projection (Eq. 7-9) of image(s) ``x`` onto measured ``kspace``:
    ``A.prox_l2(x, kspace, lam)`` of the undersampled Fourier operator ``A = M F``.

    ``x`` and ``kspace`` have the same shape (``(..., H, W)``; coil images for multi-coil);
    ``mask`` is boolean and broadcasts. ``lam`` None is the hard projection (lambda = infinity),
    else a positive float or 0-dim tensor.
    """
    return _fourier(mask, x).prox_l2(x, kspace, lam, validate=False)


def _check_data(x, kspace, mask, maps=None, x_name="x"):
    x = check_complex(x, x_name, ndim=(3, 4))
    kspace = check_complex(kspace, "kspace", ndim=(3, 4))
    if maps is not None:
        maps = check_complex(maps, "maps", ndim=(3, 4))
    mshape = tuple(kspace.shape)
    if kspace.ndim == 4 and getattr(mask, "ndim", 0) == 3:  # (B, H, W) masks broadcast over coils
        mshape = mshape[:1] + mshape[2:]
    mask = check_mask(mask, "mask", shape=mshape)
    if mask.ndim > 3:
        raise ValueError(f"mask: expected (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    if mask.ndim == 3 and mask.shape[0] not in (1, kspace.shape[0]):
        raise ValueError(f"mask: batch size {mask.shape[0]} differs from kspace's {kspace.shape[0]}")
    # a CPU mask (or maps) with GPU data would fail inside torch.where / the products
    mask = mask.to(kspace.device)
    if maps is not None:
        maps = maps.to(kspace.device)
    return x, kspace, mask, maps


# ----------------------------------------------------------------------------------------------
# DC and CC layers


class DataConsistency(nn.Module):
    """Data-consistency projection f_DC (Eq. 7-9).

    ``f_DC(x) = F^-1 Lambda F x + lam/(1+lam) F^-1 y`` with ``Lambda_kk = 1/(1+lam)`` on the
    sampled set Omega and 1 elsewhere (Eq. 8-9): sampled k-space becomes
    ``(F x + lam y) / (1 + lam)`` (soft), or the measurement itself when ``lam`` is None
    (hard, lambda = infinity, the paper's choice). Its Jacobian is ``F^-1 Lambda F`` (Eq. 16);
    autograd derives exactly that, because the layer is affine in ``x``.

    Args:
        lam: None for hard DC, else lambda > 0 (Eq. 7).
        learn_lam: make lambda a trainable parameter (stored as log lambda); needs a finite lam.

    Call ``dc(x, kspace, mask, maps=None)``:

    * single-coil: ``x`` ``(B, H, W)``, ``kspace`` ``(B, H, W)``;
    * multi-coil coil images: ``x`` ``(B, C, H, W)``, ``kspace`` ``(B, C, H, W)``;
    * multi-coil through maps: ``x`` ``(B, H, W)`` image, ``kspace`` ``(B, C, H, W)``, ``maps``
      ``(B, C, H, W)`` or ``(C, H, W)``: image -> coils (S x) -> DC -> combine (S^H), returning
      ``(B, H, W)``.
    """

    def __init__(self, lam: Optional[float] = None, learn_lam: bool = False):
        super().__init__()
        if lam is None:
            if learn_lam:
                raise ValueError("learn_lam: a learned lambda needs a finite starting lam > 0, got lam=None (hard DC)")
            self.log_lam = None
        else:
            lam = check_float(lam, "lam", low=0.0, low_open=True)
            t = torch.tensor(math.log(lam), dtype=torch.float32)
            if learn_lam:
                self.log_lam = nn.Parameter(t)
            else:
                self.register_buffer("log_lam", t)
        self.learn_lam = bool(learn_lam)

    @property
    def lam(self):
        """lambda (None for hard DC), a 0-dim tensor otherwise."""
        return None if self.log_lam is None else self.log_lam.exp()

    def extra_repr(self) -> str:
        return "lam=inf (hard)" if self.log_lam is None else f"lam={float(self.lam):.4g}, learn_lam={self.learn_lam}"

    def project(self, x, kspace, mask, maps=None):
        """Unvalidated :meth:`forward` (used inside the cascade)."""
        lam = self.lam
        if lam is not None:
            lam = lam.to(torch.float64 if x.dtype == torch.complex128 else torch.float32)
        if maps is not None and x.ndim == kspace.ndim - 1:  # S^H f_DC(S x), A = M F S
            return _fourier(mask, x, maps).prox_l2(x, kspace, lam, validate=False)
        return _fourier(mask, x).prox_l2(x, kspace, lam, validate=False)

    def forward(self, x, kspace, mask, maps=None):
        """Apply f_DC.

        Args:
            x: image ``(B, H, W)`` or coil images ``(B, C, H, W)``, complex.
            kspace: measured k-space, same shape as the coil data, zeros off the mask.
            mask: ``(H, W)`` or ``(B, H, W)`` boolean sampling mask.
            maps: coil maps; only with an image ``x`` and multi-coil ``kspace``.

        Returns:
            The data-consistent image(s), same shape as ``x``.
        """
        x, kspace, mask, maps = _check_data(x, kspace, mask, maps)
        if maps is None:
            if x.shape != kspace.shape:
                raise ValueError(
                    f"x: expected the shape of kspace {tuple(kspace.shape)} (pass maps to use a coil-combined image), got {tuple(x.shape)}"
                )
        else:
            if kspace.ndim != 4 or x.ndim != 3:
                raise ValueError(
                    "maps: given, so expected an image x (B, H, W) and multi-coil kspace (B, C, H, W), "
                    f"got x {tuple(x.shape)} and kspace {tuple(kspace.shape)}"
                )
            if tuple(maps.shape[-3:]) != tuple(kspace.shape[-3:]) or x.shape[-2:] != kspace.shape[-2:]:
                raise ValueError(
                    f"maps: expected shape (B, C, H, W) or (C, H, W) matching kspace {tuple(kspace.shape)}, got {tuple(maps.shape)}"
                )
        return self.project(x, kspace, mask, maps)


class CalibrationConsistency(nn.Module):
    """Calibration-consistency projection f_CC(x) = G F x (Eq. 13), in image space.

    The SPIRiT operator G (a k-space convolution across coils) is applied as the equivalent
    per-pixel coil mixing ``G_img`` ``(C, C, H, W)`` (or batched ``(B, C, C, H, W)``) on coil
    images: ``out[b, c] = sum_d G_img[c, d] x[b, d]``, i.e. ``F^-1 G F x``. In the cascade it is
    always followed by DC; the composed Jacobian is ``F^-1 Lambda F G_img`` (Eq. 17). G is
    fixed (a buffer), never trained.

    Args:
        G_img: the image-space operator, or None to pass it at call time.
    """

    def __init__(self, G_img: Optional[torch.Tensor] = None):
        super().__init__()
        if G_img is not None:
            G_img = self._check_G(G_img)
        self.register_buffer("G_img", G_img)

    @staticmethod
    def _check_G(G_img, coil_images=None):
        G_img = check_complex(G_img, "G_img", ndim=(4, 5))
        if G_img.shape[-4] != G_img.shape[-3]:
            raise ValueError(f"G_img: expected (C, C, H, W) or (B, C, C, H, W), got shape {tuple(G_img.shape)}")
        if coil_images is not None:
            B, C, H, W = coil_images.shape
            if tuple(G_img.shape[-4:]) != (C, C, H, W) or (G_img.ndim == 5 and G_img.shape[0] not in (1, B)):
                raise ValueError(
                    f"G_img: expected shape (C, C, H, W) = {(C, C, H, W)} (optionally batched) for coil images "
                    f"{tuple(coil_images.shape)}, got {tuple(G_img.shape)}"
                )
        return G_img

    def forward(self, coil_images: torch.Tensor, G_img: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Apply f_CC.

        Args:
            coil_images: ``(B, C, H, W)`` complex.
            G_img: overrides the stored operator.

        Returns:
            ``(B, C, H, W)`` coil images ``G_img x``.
        """
        coil_images = check_complex(coil_images, "coil_images", ndim=4)
        G = self.G_img if G_img is None else G_img
        if G is None:
            raise ValueError("G_img: no SPIRiT operator stored or given; pass G_img (C, C, H, W)")
        G = self._check_G(G, coil_images)
        return calibration_consistency(coil_images, G)


# ----------------------------------------------------------------------------------------------
# subnetworks


class ConvSubnet(nn.Module):
    """The paper's subnetwork: an input 3x3 conv layer (``in_ch -> width``, ReLU), ``depth``
    hidden 3x3 conv layers of ``width`` channels with ReLU, and an output 3x3 conv layer
    (``width -> out_ch``, linear). Real tensors ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.

    Args:
        in_ch: input channels (2: real and imaginary parts).
        out_ch: output channels (1: magnitude for single-coil; 1 per real/imaginary subnetwork
            for multi-coil).
        width: hidden channels (paper: 64).
        depth: hidden conv layers (paper: 4).
    """

    def __init__(self, in_ch: int = 2, out_ch: int = 1, width: int = 64, depth: int = 4):
        super().__init__()
        in_ch = check_int(in_ch, "in_ch", low=1)
        out_ch = check_int(out_ch, "out_ch", low=1)
        width = check_int(width, "width", low=1)
        depth = check_int(depth, "depth", low=0)
        layers: list[nn.Module] = [nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, out_ch, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.in_ch, self.out_ch, self.width, self.depth = in_ch, out_ch, width, depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _DoubleConv(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True)
        )


class UNetSubnet(nn.Module):
    """A small U-Net behind the :class:`ConvSubnet` interface (not in the paper; shows that the
    cascade does not care which subnetwork it holds).

    ``depth`` down-sampling levels (2x2 max-pool), channels ``width * 2**level``, bilinear
    up-sampling with skip connections, a linear 1x1 output conv. Inputs whose size is not a
    multiple of ``2**depth`` are reflect-padded and cropped back.

    Args:
        in_ch, out_ch: as :class:`ConvSubnet`.
        width: channels at full resolution.
        depth: number of down-sampling levels.
    """

    def __init__(self, in_ch: int = 2, out_ch: int = 1, width: int = 32, depth: int = 2):
        super().__init__()
        in_ch = check_int(in_ch, "in_ch", low=1)
        out_ch = check_int(out_ch, "out_ch", low=1)
        width = check_int(width, "width", low=1)
        depth = check_int(depth, "depth", low=1, high=6)
        self.downs = nn.ModuleList()
        c = in_ch
        for lvl in range(depth):
            self.downs.append(_DoubleConv(c, width * 2**lvl))
            c = width * 2**lvl
        self.bottom = _DoubleConv(c, width * 2**depth)
        self.ups = nn.ModuleList()
        c = width * 2**depth
        for lvl in reversed(range(depth)):
            self.ups.append(_DoubleConv(c + width * 2**lvl, width * 2**lvl))
            c = width * 2**lvl
        self.out = nn.Conv2d(c, out_ch, 1)
        self.in_ch, self.out_ch, self.width, self.depth = in_ch, out_ch, width, depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = x.shape[-2:]
        m = 2**self.depth
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(H, W) > max(ph, pw) else "replicate")
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat((x, skip), dim=1))
        return self.out(x)[..., :H, :W]


def _make_net(subnet: str, out_ch: int, width: int, depth: int) -> nn.Module:
    if subnet == "conv":
        return ConvSubnet(2, out_ch, width, depth)
    return UNetSubnet(2, out_ch, width, max(1, min(depth, 4)))


class MagnitudeSubnet(nn.Module):
    """Single-coil block: complex ``(B, H, W)`` -> 2 channels -> one network -> a real
    magnitude image with zero phase (the paper's single output channel). With ``residual``
    the network predicts a correction added to ``|x|``."""

    def __init__(self, subnet: str = "conv", width: int = 64, depth: int = 4, residual: bool = True):
        super().__init__()
        self.net = _make_net(subnet, 1, width, depth)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = complex_to_channels(x)
        r = self.net(inp)[:, 0].float()
        if self.residual:
            r = r + x.abs().to(r.dtype)
        return torch.complex(r, torch.zeros_like(r)).to(x.dtype)


class ComplexSubnet(nn.Module):
    """Multi-coil block: separate real and imaginary networks (as in the paper), both seeing the
    2-channel coil-combined image. With ``residual`` they predict corrections to ``x``."""

    def __init__(self, subnet: str = "conv", width: int = 64, depth: int = 4, residual: bool = True):
        super().__init__()
        self.net_re = _make_net(subnet, 1, width, depth)
        self.net_im = _make_net(subnet, 1, width, depth)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = complex_to_channels(x)
        re = self.net_re(inp)[:, 0].float()
        im = self.net_im(inp)[:, 0].float()
        if self.residual:
            re = re + x.real.to(re.dtype)
            im = im + x.imag.to(im.dtype)
        return torch.complex(re, im).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# the cascade


class Cascade(nn.Module):
    """Cascade of P subnetworks interleaved with DC (single-coil, Eq. 10) or CC + DC
    (multi-coil, Eq. 14) layers; see the module docstring for the exact composition.

    Args:
        n_subnets: P (paper: 5).
        coils: "single" (magnitude output, Eq. 10) or "multi" (separate real/imaginary
            subnetworks, coil maps and SPIRiT CC, Eq. 14).
        width: hidden channels of each subnetwork (paper: 64).
        depth: hidden layers of each subnetwork (paper: 4; levels for the U-Net).
        subnet: "conv" (the paper's :class:`ConvSubnet`) or "unet" (:class:`UNetSubnet`).
        dc_lam: None for hard DC (the paper), else the soft-DC lambda of Eq. 7.
        learn_lam: learn each DC layer's lambda (needs ``dc_lam``).
        residual: subnetworks predict a correction added to their input (magnitude for
            single-coil). The paper does not say; measured on the bundled T1 slices (64x64,
            R = 4, 3 subnetworks x 32 channels, 3 epochs each at lr 1e-3, 78 training images):
            validation PSNR 30.3 dB with the residual connection, 26.8 dB without it
            (zero-filled: 20.9 dB), so it is the default.
        seed: if given, initialise the weights from this seed (independent of the global RNG).
    """

    def __init__(
        self,
        n_subnets: int = 5,
        coils: str = "single",
        width: int = 64,
        depth: int = 4,
        subnet: str = "conv",
        dc_lam: Optional[float] = None,
        learn_lam: bool = False,
        residual: bool = True,
        seed: Optional[int] = None,
    ):
        super().__init__()
        n_subnets = check_int(n_subnets, "n_subnets", low=1)
        check_choice(coils, "coils", ("single", "multi"))
        check_choice(subnet, "subnet", ("conv", "unet"))
        width = check_int(width, "width", low=1)
        depth = check_int(depth, "depth", low=0)
        if dc_lam is not None:
            dc_lam = check_float(dc_lam, "dc_lam", low=0.0, low_open=True)
        if not isinstance(residual, bool):
            raise TypeError(f"residual: expected a bool, got {residual!r}")
        self.arch = dict(
            n_subnets=n_subnets, coils=coils, width=width, depth=depth, subnet=subnet,
            dc_lam=dc_lam, learn_lam=bool(learn_lam), residual=residual,
        )
        Block = MagnitudeSubnet if coils == "single" else ComplexSubnet

        def build():
            self.subnets = nn.ModuleList(Block(subnet, width, depth, residual) for _ in range(n_subnets))
            self.dcs = nn.ModuleList(DataConsistency(dc_lam, learn_lam) for _ in range(n_subnets))

        if seed is None:
            build()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(check_int(seed, "seed"))
                build()
        self.n_subnets, self.coils = n_subnets, coils
        self.autocast_dtype: Optional[torch.dtype] = None  # set by the trainer (amp=True: bf16)
        # set by mrtl.train (saved in checkpoints): training image size, and the median 99th
        # percentile of |x_u| in the training data, the input scale mrtl.train.reconstruct restores
        self.image_shape: Optional[tuple] = None
        self.input_p99: Optional[float] = None

    # -- configuration -------------------------------------------------------------------------
    def config(self) -> dict:
        """The constructor arguments (without ``seed``): enough to rebuild the architecture."""
        return dict(self.arch)

    def stage_parameters(self, p: int):
        """Trainable parameters of stage ``p`` (1-based): subnetwork p and its DC layer."""
        p = self._check_p(p)
        return list(self.subnets[p - 1].parameters()) + list(self.dcs[p - 1].parameters())

    def _check_p(self, p):
        return check_int(p, "p", low=1, high=self.n_subnets)

    def use_amp(self, amp: Optional[bool]) -> None:
        """bf16 autocast of the subnetworks on (True) or off (False); None leaves it as it is.
        The DC/CC layers always stay in float32/complex64."""
        if amp is not None:
            self.autocast_dtype = torch.bfloat16 if amp else None

    def remember_training_data(self, image_shape=None, input_p99=None) -> None:
        """Record the training image size and input scale (the median 99th percentile of ``|x_u|``
        that ``mrtl.train.reconstruct`` restores); None leaves a value as it is, an input scale
        that is not a finite positive number is dropped."""
        if image_shape is not None:
            self.image_shape = tuple(image_shape)
        if input_p99 is not None:
            ok = isinstance(input_p99, (int, float)) and math.isfinite(input_p99) and input_p99 > 0
            self.input_p99 = float(input_p99) if ok else None

    # -- validation ----------------------------------------------------------------------------
    def _check_inputs(self, x_u, kspace, mask, maps, G_img):
        x_u, kspace, mask, maps = _check_data(x_u, kspace, mask, maps, x_name="x_u")
        if self.coils == "single":
            if kspace.ndim != 3 or x_u.shape != kspace.shape:
                raise ValueError(
                    f"kspace: single-coil cascade expects x_u and kspace of shape (B, H, W), got x_u "
                    f"{tuple(x_u.shape)} and kspace {tuple(kspace.shape)}"
                )
            if maps is not None or G_img is not None:
                raise ValueError("maps/G_img: a single-coil cascade takes neither coil maps nor a SPIRiT operator")
        else:
            if kspace.ndim != 4:
                raise ValueError(f"kspace: multi-coil cascade expects (B, C, H, W), got {tuple(kspace.shape)}")
            if maps is None:
                raise ValueError("maps: a multi-coil cascade needs coil maps (B, C, H, W) or (C, H, W)")
            if tuple(maps.shape[-3:]) != tuple(kspace.shape[-3:]) or (maps.ndim == 4 and maps.shape[0] not in (1, kspace.shape[0])):
                raise ValueError(f"maps: expected shape matching kspace {tuple(kspace.shape)}, got {tuple(maps.shape)}")
            if x_u.shape[0] != kspace.shape[0] or x_u.shape[-2:] != kspace.shape[-2:]:
                raise ValueError(f"x_u: expected (B, H, W) or (B, C, H, W) matching kspace {tuple(kspace.shape)}, got {tuple(x_u.shape)}")
            if G_img is not None:
                G_img = CalibrationConsistency._check_G(G_img, kspace)
        return x_u, kspace, mask, maps, G_img

    # -- building blocks -----------------------------------------------------------------------
    def initial_state(self, x_u, kspace, mask, maps=None):
        """``u_0``: ``x_u`` for single-coil; zero-filled coil images ``F^-1 M y`` for multi-coil
        (``x_u`` itself when it is already ``(B, C, H, W)``)."""
        if self.coils == "single" or x_u.ndim == 4:
            return x_u
        return MultiCoilFourier(mask, validate=False).adjoint(kspace, validate=False)

    def output(self, state, maps=None):
        """Image from a stage state: the state itself (single-coil) or ``S^H u`` (multi-coil)."""
        return state if self.coils == "single" else Sense(maps, validate=False).adjoint(state, validate=False)

    def _subnet(self, p, image):
        net = self.subnets[p - 1]
        if self.autocast_dtype is not None and image.device.type in ("cuda", "cpu"):
            # the same code path on both devices (bf16 on CPU lets tests catch dtype errors
            # without a GPU); DC/CC layers stay outside, in float32/complex64
            with torch.autocast(image.device.type, dtype=self.autocast_dtype):
                return net(image)
        return net(image)

    def _stage(self, p, state, kspace, mask, maps, G_img):
        dc = self.dcs[p - 1]
        if self.coils == "single":
            return dc.project(self._subnet(p, state), kspace, mask)
        S = Sense(maps, validate=False)
        z = state
        if G_img is not None:
            z = dc.project(calibration_consistency(z, G_img), kspace, mask)  # f_DC(f_CC(u_{p-1}))
        c = self._subnet(p, S.adjoint(z, validate=False))
        return dc.project(S.forward(c, validate=False), kspace, mask)  # f_DC(S C_p(S^H z_p)), in coil space

    # -- public forward passes -----------------------------------------------------------------
    def forward_stage(self, p: int, x_in, kspace, mask, maps=None, G_img=None, validate: bool = True):
        """One stage p (1-based, Eq. 11): ``u_p`` from ``u_{p-1}``.

        Args:
            p: stage index in ``1..n_subnets``.
            x_in: the state ``u_{p-1}`` (single-coil ``(B, H, W)``; multi-coil coil images
                ``(B, C, H, W)``), e.g. from :meth:`prefix`.
            kspace, mask, maps, G_img: as :meth:`forward`.
            validate: check the arguments (the trainer turns this off for speed).

        Returns:
            The state ``u_p`` (same shape as ``x_in``); :meth:`output` turns it into an image.
        """
        p = self._check_p(p)
        if validate:
            if self.coils == "multi":
                x_in = check_complex(x_in, "x_in", ndim=4)
            _, kspace, mask, maps, G_img = self._check_inputs(
                x_in if self.coils == "single" else x_in[:, 0], kspace, mask, maps, G_img
            )
            if x_in.shape[-2:] != kspace.shape[-2:] or x_in.shape[0] != kspace.shape[0]:
                raise ValueError(f"x_in: expected the shape of kspace {tuple(kspace.shape)}, got {tuple(x_in.shape)}")
        return self._stage(p, x_in, kspace, mask, maps, G_img)

    def prefix(self, x_u, kspace, mask, maps=None, G_img=None, upto: Optional[int] = None, validate: bool = True):
        """The state ``u_upto`` after the first ``upto`` stages (``upto=0``: ``u_0``)."""
        if validate:
            x_u, kspace, mask, maps, G_img = self._check_inputs(x_u, kspace, mask, maps, G_img)
        upto = self.n_subnets if upto is None else check_int(upto, "upto", low=0, high=self.n_subnets)
        state = self.initial_state(x_u, kspace, mask, maps)
        for p in range(1, upto + 1):
            state = self._stage(p, state, kspace, mask, maps, G_img)
        return state

    def forward(self, x_u, kspace, mask, maps=None, G_img=None, upto: Optional[int] = None):
        """Reconstruct (Eq. 10 single-coil, Eq. 14 multi-coil).

        Args:
            x_u: zero-filled image ``A^H y`` ``(B, H, W)`` (multi-coil: coil-combined; coil
                images ``(B, C, H, W)`` also accepted).
            kspace: measured k-space ``(B, H, W)`` / ``(B, C, H, W)``, zero off the mask.
            mask: ``(H, W)`` or ``(B, H, W)`` boolean.
            maps: coil maps ``(B, C, H, W)`` or ``(C, H, W)`` (multi-coil only).
            G_img: SPIRiT image-space operator ``(C, C, H, W)`` or ``(B, C, C, H, W)`` (multi-coil;
                None skips the CC layers).
            upto: apply only the first ``upto`` stages (default: all).

        Returns:
            Complex image ``(B, H, W)``.
        """
        x_u, kspace, mask, maps, G_img = self._check_inputs(x_u, kspace, mask, maps, G_img)
        return self.output(self.prefix(x_u, kspace, mask, maps, G_img, upto, validate=False), maps)


def conv_flops(model: nn.Module, H: int, W: int) -> int:
    """Forward FLOPs of every Conv2d in ``model`` for one ``H x W`` image (2 per multiply-add),
    counted analytically from the conv shapes (U-Net levels are at reduced resolution, so this
    counts full resolution for ConvSubnet only; U-Net convs are scaled by their level)."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, ConvSubnet):
            for conv in mod.net:
                if isinstance(conv, nn.Conv2d):
                    k = conv.kernel_size[0] * conv.kernel_size[1]
                    total += 2 * conv.in_channels * conv.out_channels * k * H * W
        elif isinstance(mod, UNetSubnet):
            for lvl, blk in enumerate(mod.downs):
                total += sum(2 * c.in_channels * c.out_channels * 9 * H * W // 4**lvl for c in blk if isinstance(c, nn.Conv2d))
            total += sum(2 * c.in_channels * c.out_channels * 9 * H * W // 4**mod.depth for c in mod.bottom if isinstance(c, nn.Conv2d))
            for i, blk in enumerate(mod.ups):
                lvl = mod.depth - 1 - i
                total += sum(2 * c.in_channels * c.out_channels * 9 * H * W // 4**lvl for c in blk if isinstance(c, nn.Conv2d))
            total += 2 * mod.out.in_channels * mod.out.out_channels * H * W
    return int(total)
