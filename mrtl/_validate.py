"""Input validation shared by every public function.

Each checker raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong
shape, range or content) with a message that names the argument, says what was expected and
what was given. A NaN or Inf in data is always an error.
"""

from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import numpy as np
import torch

__all__ = [
    "as_tensor",
    "check_tensor",
    "check_complex",
    "check_finite",
    "check_int",
    "check_float",
    "check_shape2d",
    "check_acceleration",
    "check_mask",
    "check_choice",
    "check_bool",
]


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def as_tensor(x, name: str) -> torch.Tensor:
    """Return ``x`` as a torch tensor (numpy arrays are wrapped without a copy where possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {_describe(x)}")


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ``ValueError`` if ``x`` holds NaN or Inf."""
    if x.is_floating_point() or x.is_complex():
        if not bool(torch.isfinite(x).all()):
            n_bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name}: contains {n_bad} NaN/Inf value(s); expected finite data")
    return x


def check_tensor(
    x,
    name: str,
    ndim: int | Sequence[int] | None = None,
    min_ndim: int | None = None,
    complex: bool | None = None,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a tensor argument and return it as ``torch.Tensor``.

    Args:
        x: tensor or numpy array.
        name: the argument's name, used in error messages.
        ndim: the allowed number(s) of dimensions.
        min_ndim: the smallest allowed number of dimensions.
        complex: True requires a complex dtype, False a real one, None accepts either.
        finite: reject NaN/Inf.
    """
    x = as_tensor(x, name)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got {_describe(x)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name}: expected at least {min_ndim} dimensions, got {_describe(x)}")
    if complex is True and not x.is_complex():
        raise TypeError(
            f"{name}: expected a complex tensor (e.g. torch.complex64), got {_describe(x)}; "
            "use x.to(torch.complex64) for a real image with zero phase"
        )
    if complex is False and x.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got {_describe(x)}")
    if x.dtype == torch.bool and complex is not None:
        raise TypeError(f"{name}: expected numeric data, got {_describe(x)}")
    if finite:
        check_finite(x, name)
    return x


def check_complex(x, name: str, **kw) -> torch.Tensor:
    """Shorthand for ``check_tensor(x, name, complex=True, ...)``."""
    return check_tensor(x, name, complex=True, **kw)


def check_int(x, name: str, low: int | None = None, high: int | None = None) -> int:
    """Validate an integer in ``[low, high]`` (bounds inclusive, None = open)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {_describe(x)}")
    x = int(x)
    if (low is not None and x < low) or (high is not None and x > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {x}")
    return x


def check_float(
    x, name: str, low: float | None = None, high: float | None = None, low_open: bool = False
) -> float:
    """Validate a finite real number in ``[low, high]`` (``(low, high]`` if ``low_open``)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {_describe(x)}")
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"{name}: expected a finite number, got {x}")
    if low is not None and (x < low or (low_open and x == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name}: expected a number {op} {low}, got {x}")
    if high is not None and x > high:
        raise ValueError(f"{name}: expected a number <= {high}, got {x}")
    return x


def check_shape2d(shape, name: str = "shape") -> tuple[int, int]:
    """Validate an image shape ``(H, W)`` of positive integers (an int means square)."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape), int(shape))
    if not isinstance(shape, Iterable):
        raise TypeError(f"{name}: expected a pair of positive integers (H, W), got {_describe(shape)}")
    shape = tuple(shape)
    if len(shape) != 2:
        raise ValueError(f"{name}: expected a pair of positive integers (H, W), got {shape!r}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
            raise ValueError(f"{name}: expected positive integer sizes, got {shape!r}")
    return int(shape[0]), int(shape[1])


def check_acceleration(R, name: str = "R", low: float = 1.0, high: float | None = 20.0) -> float:
    """Validate an acceleration factor R in ``[low, high]`` (default [1, 20]; ``high=None``: no cap,
    for R measured from a given mask)."""
    return check_float(R, name, low=low, high=high)


def check_mask(mask, name: str, shape: Sequence[int] | None = None) -> torch.Tensor:
    """Validate a sampling mask: boolean (or 0/1) tensor whose last two axes are k-space.

    If ``shape`` (the data shape) is given, the mask must broadcast against it. An all-zero
    mask is an error (nothing was sampled).
    """
    mask = as_tensor(mask, name)
    if mask.ndim < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions (..., H, W), got {_describe(mask)}")
    if mask.dtype != torch.bool:
        if mask.is_complex():
            if bool((mask.imag != 0).any()):
                raise ValueError(f"{name}: expected a real 0/1 mask, got complex values")
            mask = mask.real
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name}: expected a boolean or 0/1 mask, got other values ({_describe(mask)})")
        mask = mask != 0
    if shape is not None:
        if mask.ndim > len(shape):
            raise ValueError(
                f"{name}: mask of shape {tuple(mask.shape)} has more dimensions than the data {tuple(shape)}"
            )
        try:
            torch.broadcast_shapes(tuple(mask.shape), tuple(shape))
        except RuntimeError:
            raise ValueError(
                f"{name}: mask of shape {tuple(mask.shape)} does not broadcast against data of shape {tuple(shape)}"
            ) from None
        if tuple(mask.shape[-2:]) != tuple(shape[-2:]):
            raise ValueError(
                f"{name}: mask k-space size {tuple(mask.shape[-2:])} differs from the data's {tuple(shape[-2:])}"
            )
    if not bool(mask.any()):
        raise ValueError(f"{name}: the mask samples nothing (all zero)")
    return mask


def check_choice(x, name: str, choices: Iterable) -> object:
    """Validate that ``x`` is one of ``choices``."""
    choices = tuple(choices)
    def same(a, b) -> bool:
        if isinstance(a, bool) != isinstance(b, bool):
            return False
        return a is b or a == b

    if isinstance(x, (torch.Tensor, np.ndarray)) or not any(same(x, c) for c in choices):
        raise ValueError(f"{name}: expected one of {choices}, got {x!r}")
    return x


def check_bool(x, name: str) -> bool:
    """Validate a flag: ``True`` or ``False`` only (not ``"maybe"``, ``"no"``, 0 or 1).

    Config files are where this matters: YAML reads ``resume: maybe`` as the string ``"maybe"``,
    which is truthy, so an unchecked ``if resume:`` would silently resume.
    """
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected true or false, got {_describe(x)}")
    return bool(x)
