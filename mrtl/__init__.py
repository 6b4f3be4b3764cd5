"""mrtl: transfer learning for accelerated MRI reconstruction.

A library and a course reproducing Dar, Özbey and Çukur, "A transfer-learning approach for
accelerated MRI using deep neural networks", Magn Reson Med 2020.

Layers (lower never import upper): ``fft`` -> ``masks`` -> ``linops`` (the forward model, used
by everything above) -> ``coils``/``wavelets``/``metrics`` -> ``recon`` -> ``models`` -> ``data``
-> ``train`` -> ``experiments`` -> ``cli``.
"""

__version__ = "0.1.0"
