"""Classic reconstructions (layer 4): L1-wavelet CS, SPIRiT and L1-SPIRiT, parameter selection.

- :func:`cs_l1_wavelet`: single-coil compressed sensing (Eq. 2) with an L1-wavelet (and
  optional TV) penalty, solved by SparseMRI's nonlinear conjugate gradient or by FISTA.
- :func:`spirit_calibrate` / :class:`SpiritKernel` / :func:`spirit_apply`: the SPIRiT
  interpolation operator G (Eq. 3, 13), in k-space and in image space.
- :func:`l1_spirit_pocs`: multi-coil L1-SPIRiT by POCS (Eq. 3).
- :func:`zero_filled_sense`: the zero-filled, coil-combined baseline.
- :func:`select_parameters`: grid search maximising validation PSNR, as the paper did.

All functions are batched torch code that runs unchanged on CPU and CUDA.
"""

from .cs import DEFAULT_CS_ITERATIONS, CSResult, cs_l1_wavelet, default_cs_lambda
from .select import DEFAULT_GRIDS, select_parameters
from .spirit import (
    SpiritKernel,
    SpiritResult,
    default_spirit_iterations,
    l1_spirit_pocs,
    spirit_apply,
    spirit_calibrate,
    zero_filled_sense,
)

__all__ = [
    "CSResult",
    "cs_l1_wavelet",
    "default_cs_lambda",
    "DEFAULT_CS_ITERATIONS",
    "SpiritKernel",
    "SpiritResult",
    "spirit_calibrate",
    "spirit_apply",
    "l1_spirit_pocs",
    "default_spirit_iterations",
    "zero_filled_sense",
    "select_parameters",
    "DEFAULT_GRIDS",
]
