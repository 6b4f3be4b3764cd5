"""Image sources and the undersampling pipeline (layer 6).

- Bundled data (``data/``): :func:`bundled` for the domains ``natural`` (real photos), ``t1``
  (real Colin27), ``t2`` and ``t1_synth`` (SYNTHETIC), ``pd`` (real PD); :func:`info`,
  :func:`show_examples`.
- User data: :class:`PhotoFolder`, :class:`NiftiFolder`, :class:`FastMRIFolder`; :func:`read_array`
  (one array from a ``.npy`` or ``.h5`` file, with clear errors).
- Training pairs: :class:`UndersampledDataset` -> :class:`Sample`, :func:`collate`.
- Helpers: :func:`normalize` (99th percentile of |x| to 1), :func:`split_by_subject`.
"""

from .datasets import Sample, UndersampledDataset, collate
from .loaders import CoilRecord, FastMRIFolder, NiftiFolder, PhotoFolder, crop_or_pad, parse_ixi_name, read_array
from .show import info, show_examples
from .simulate import add_sinusoidal_phase, coil_map_bank, compress_maps, sinusoidal_phase
from .sources import DOMAINS, SPLITS, BundledSource, ImageRecord, bundled, data_dir, manifest, normalize, resize, split_by_subject
from .train_data import TrainData, as_train_data

__all__ = [
    "ImageRecord",
    "Sample",
    "CoilRecord",
    "normalize",
    "resize",
    "split_by_subject",
    "bundled",
    "BundledSource",
    "DOMAINS",
    "SPLITS",
    "data_dir",
    "manifest",
    "info",
    "show_examples",
    "PhotoFolder",
    "NiftiFolder",
    "FastMRIFolder",
    "crop_or_pad",
    "parse_ixi_name",
    "read_array",
    "UndersampledDataset",
    "collate",
    "sinusoidal_phase",
    "add_sinusoidal_phase",
    "coil_map_bank",
    "compress_maps",
]
