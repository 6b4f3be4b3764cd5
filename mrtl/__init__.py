"""mrtl: transfer learning for accelerated MRI reconstruction.

A library and a course reproducing Dar, Özbey and Çukur, "A transfer-learning approach for
accelerated MRI using deep neural networks", Magn Reson Med 2020.

Layers (lower never import upper): ``fft`` -> ``masks`` -> ``linops`` (the forward model, used
by everything above) -> ``coils``/``wavelets``/``metrics`` -> ``recon`` -> ``models`` -> ``data``
-> ``train`` -> ``experiments`` -> ``cli``. ``presets`` (the paper's and the small CPU scale's
settings and the default R, written once) imports nothing from mrtl, so every layer may read it;
``train``, ``train_cli`` and ``experiments`` do.
"""

__version__ = "0.1.0"
