import numpy as np
import numpy.typing as npt

from sparseprop._formats import CSCMatrix, CSRMatrix

def linear_forward(
    X: npt.ArrayLike,
    W: CSRMatrix | CSCMatrix,
    bias: npt.ArrayLike | None = ...,
    *,
    n_threads: int | None = ...,
    out: np.ndarray | None = ...,
) -> np.ndarray: ...
def linear_backward(
    X: npt.ArrayLike,
    W: CSRMatrix | CSCMatrix,
    dY: npt.ArrayLike,
    need_input_grad: bool = ...,
    *,
    n_threads: int | None = ...,
    out_dx: np.ndarray | None = ...,
) -> tuple[np.ndarray | None, np.ndarray]: ...
