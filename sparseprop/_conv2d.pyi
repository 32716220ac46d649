from typing import Literal

import numpy as np
import numpy.typing as npt

from sparseprop._convweight import SparseConvWeight

_Pair = int | tuple[int, int]
_Algorithm = Literal["auto", "batch_last", "over_width"]

ALGORITHMS: tuple[str, ...]

def conv2d_forward(
    X: npt.ArrayLike,
    W: SparseConvWeight,
    bias: npt.ArrayLike | None = ...,
    stride: _Pair = ...,
    padding: _Pair | Literal["same", "valid"] = ...,
    dilation: _Pair = ...,
    groups: int = ...,
    algorithm: _Algorithm = ...,
    *,
    n_threads: int | None = ...,
    out: np.ndarray | None = ...,
) -> np.ndarray: ...
def conv2d_backward(
    X: npt.ArrayLike,
    W: SparseConvWeight,
    dY: npt.ArrayLike,
    stride: _Pair = ...,
    padding: _Pair | Literal["same", "valid"] = ...,
    dilation: _Pair = ...,
    groups: int = ...,
    need_input_grad: bool = ...,
    algorithm: _Algorithm = ...,
    *,
    n_threads: int | None = ...,
    out_dx: np.ndarray | None = ...,
) -> tuple[np.ndarray | None, np.ndarray]: ...
def conv2d_algorithm(
    X_shape: tuple[int, ...],
    W: SparseConvWeight,
    stride: _Pair = ...,
    padding: _Pair | Literal["same", "valid"] = ...,
    dilation: _Pair = ...,
    groups: int = ...,
) -> Literal["batch_last", "over_width"]: ...
def lanes(dtype: npt.DTypeLike) -> int: ...
