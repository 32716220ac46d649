"""The bad-input table: every row is one bad call and the error it must raise.

Each row names the call (Python source, evaluated with the fixtures of
``SETUP`` / ``TORCH_SETUP`` below), the exception type, and three fragments
that the message must contain: the *argument* at fault, what was *expected*
and what was *received*.  Rows marked crash-prone are calls where, without
the check, a malformed value would reach pointer arithmetic in the kernels
(raw index arrays, shapes, geometry, sizes, dtypes of buffers) or allocate
without bound: they run in a child process (one for all of them, restarted
after a crash), so a segfault or an abort fails that row instead of killing
the test run, and the child caps its address space so a missing size check
fails fast instead of exhausting memory.

The table complements the per-module tests (tests/test_formats.py,
test_linear.py, test_conv2d.py, test_torch_layers.py), which keep their own
bad-input cases; rows here are new.  ``python tests/test_bad_inputs.py``
prints the table as Markdown: that is docs/bad-inputs.md (a test keeps the
two in sync).
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "bad-inputs.md"

SETUP = """
import numpy as np
import scipy.sparse as sps
import sparseprop as sp
f32 = np.float32
W = sp.CSRMatrix.from_dense(np.eye(4, 3, dtype=f32))       # a (4, 3) linear weight
X = np.ones((2, 3), f32)
dY = np.ones((2, 4), f32)
CW = sp.SparseConvWeight.from_dense(np.ones((4, 3, 3, 3), f32))
XC = np.ones((2, 3, 8, 8), f32)                              # NCHW
dYC = np.ones((2, 4, 6, 6), f32)
def conv_w(shape):
    return sp.SparseConvWeight.from_dense(np.ones(shape, f32))
def wide_rows(shape):  # a broadcast view whose rows are real (last axis contiguous)
    return np.broadcast_to(np.ones((1,) * (len(shape) - 1) + shape[-1:], f32), shape)
"""

TORCH_SETUP = """
import torch
from torch import nn
import sparseprop.torch as spt
ops = torch.ops.sparseprop
lin = spt.SparseLinear(8, 4)                        # dense structure: 32 stored values
conv = spt.SparseConv2d(3, 4, 3, padding=1)         # 4 x 27 stored values
x = torch.ones(2, 8)
xc = torch.ones(2, 3, 8, 8)
v, p, i = lin.values.detach(), lin.indptr, lin.indices
cv, cp, ci = conv.values.detach(), conv.indptr, conv.indices
C = [1, 1]                                          # stride = padding = dilation
"""


TORCH_NAMES = {"torch", "nn", "spt", "ops", "lin", "conv", "x", "xc", "v", "p", "i", "cv", "cp",
               "ci", "C"}


class Row(NamedTuple):
    id: str
    call: str
    exc: type
    arg: str        # the argument the message names
    expected: str   # what the message says was expected
    got: str        # what the message says was received
    crash: bool = False

    @property
    def torch(self):
        """Whether the call needs the names of TORCH_SETUP (and so torch)."""
        return bool(TORCH_NAMES & set(re.findall(r"[A-Za-z_]\w*", self.call)))


ROWS = [
    # ------------------------------------------------------------ CSRMatrix / CSCMatrix
    Row("csr-indptr-2d", "sp.CSRMatrix([1.0], [0], [[0, 1, 1]], (2, 2))",
        ValueError, "indptr", "must be 1-D", "(1, 3)", crash=True),
    Row("csr-indptr-negative", "sp.CSRMatrix([1.0], [0], [0, -1, 1], (2, 2))",
        ValueError, "indptr", "non-decreasing", "indptr[1]=-1", crash=True),
    Row("csr-indptr-beyond-int64", "sp.CSRMatrix([1.0], [0], np.array([0, 2**63 + 1, 1], "
        "np.uint64), (2, 2))", ValueError, "indptr", "fit in int64", "9223372036854775809",
        crash=True),
    Row("csr-indptr-python-bigint", "sp.CSRMatrix([1.0], [0], [0, 2**70, 1], (2, 2))",
        TypeError, "indptr", "hold integers", "object", crash=True),
    Row("csr-indices-bool", "sp.CSRMatrix([1.0], np.array([True]), [0, 1, 1], (2, 2))",
        TypeError, "indices", "hold integers", "bool", crash=True),
    Row("csr-indices-none", "sp.CSRMatrix([1.0], None, [0, 1, 1], (2, 2))",
        ValueError, "indices", "1-D", "shape ()", crash=True),
    Row("csr-data-2d", "sp.CSRMatrix(np.ones((1, 1)), [0], [0, 1, 1], (2, 2))",
        ValueError, "data", "1-D", "(1, 1)", crash=True),
    Row("csr-data-complex", "sp.CSRMatrix(np.ones(1, np.complex64), [0], [0, 1, 1], (2, 2))",
        TypeError, "data", "float32 or float64", "complex64"),
    Row("csr-data-big-endian", "sp.CSRMatrix(np.ones(1, '>f4'), [0], [0, 1, 1], (2, 2))",
        TypeError, "data", "float32 or float64", ">f4", crash=True),
    Row("csr-shape-float", "sp.CSRMatrix([1.0], [0], [0, 1, 1], (2.0, 2))",
        TypeError, "shape", "pair of non-negative integers", "(2.0, 2)"),
    Row("csr-shape-beyond-int32", "sp.CSRMatrix.from_dense(np.broadcast_to(f32(0), (1, 2**31)))",
        ValueError, "shape", "at most 2147483647", "(1, 2147483648)", crash=True),
    Row("csr-astype-int", "W.astype(np.int32)",
        TypeError, "dtype", "float32 or float64", "int32"),
    Row("csr-from-dense-object", "sp.CSRMatrix.from_dense(np.array([[None, 1]], dtype=object))",
        TypeError, "array", "float32 or float64", "object"),
    Row("csr-from-torch-meta", "sp.CSRMatrix.from_torch(torch.ones(2, 2, device='meta'))",
        ValueError, "tensor", "CPU", "meta"),
    Row("csr-from-torch-sparse-int",
        "sp.CSRMatrix.from_torch(torch.ones(2, 2, dtype=torch.int64).to_sparse_csr())",
        TypeError, "data", "float32 or float64", "int64"),
    Row("csc-indptr-wrong-length", "sp.CSCMatrix([1.0], [0], [0, 1], (2, 3))",
        ValueError, "indptr", "length n_columns + 1 = 4", "got 2", crash=True),
    Row("csc-indices-unsorted", "sp.CSCMatrix([1.0, 1.0], [1, 0], [0, 2, 2], (2, 2))",
        ValueError, "indices of column 0", "sorted", "got 1 then 0", crash=True),
    Row("csc-indices-duplicate", "sp.CSCMatrix([1.0, 1.0], [1, 1], [0, 0, 2], (2, 2))",
        ValueError, "indices of column 1", "free of duplicates", "got 1 then 1", crash=True),
    Row("csc-indices-negative", "sp.CSCMatrix([1.0], [-3], [0, 0, 1], (2, 2))",
        ValueError, "indices[0]=-3", "out of range", "2 rows", crash=True),
    Row("csc-shape-beyond-int32",
        "sp.CSCMatrix.from_dense(np.broadcast_to(f32(0), (2**31, 1)))",
        ValueError, "shape", "at most 2147483647", "(2147483648, 1)", crash=True),
    # ------------------------------------------------------------ linear_forward / backward
    Row("linear-W-scipy", "sp.linear_forward(X, sps.csr_array(np.eye(4, 3, dtype=f32)))",
        TypeError, "W", "CSRMatrix or CSCMatrix", "csr_array", crash=True),
    Row("linear-X-complex", "sp.linear_forward(X.astype(np.complex64), W)",
        TypeError, "X", "float32", "complex64", crash=True),
    Row("linear-X-big-endian", "sp.linear_forward(X.astype('>f4'), W)",
        TypeError, "X", "float32", ">f4", crash=True),
    Row("linear-bias-2d", "sp.linear_forward(X, W, np.ones((1, 4), f32))",
        ValueError, "bias", "(4,)", "(1, 4)", crash=True),
    Row("linear-backward-X-width", "sp.linear_backward(np.ones((2, 5), f32), W, dY)",
        ValueError, "X has shape (2, 5)", "expects (..., 3)", "(2, 5)", crash=True),
    Row("linear-dY-leading-dims", "sp.linear_backward(np.ones((2, 3, 3), f32), W, "
        "np.ones((6, 4), f32))", ValueError, "dY", "(2, 3, 4)", "(6, 4)", crash=True),
    Row("linear-dY-int", "sp.linear_backward(X, W, np.ones((2, 4), np.int64))",
        TypeError, "dY", "float32", "int64", crash=True),
    Row("linear-n-threads-float", "sp.linear_forward(X, W, n_threads=1.5)",
        TypeError, "n_threads", "positive integer", "1.5"),
    Row("linear-n-threads-bool", "sp.linear_forward(X, W, n_threads=True)",
        TypeError, "n_threads", "positive integer", "True"),
    Row("linear-backward-n-threads-str", "sp.linear_backward(X, W, dY, n_threads='2')",
        TypeError, "n_threads", "positive integer", "'2'"),
    Row("linear-output-beyond-int64", "sp.linear_forward(np.broadcast_to(f32(1), (2**59, 3)), W)",
        ValueError, "X has shape (576460752303423488, 3)", "64-bit offsets",
        "(576460752303423488, 4)", crash=True),
    Row("linear-out-dtype", "sp.linear_forward(X, W, out=np.empty((2, 4)))",
        TypeError, "out", "dtype float32", "float64"),
    Row("linear-out-shape", "sp.linear_forward(X, W, out=np.empty((4, 2), f32))",
        ValueError, "out", "shape (2, 4)", "(4, 2)"),
    Row("linear-out-dx-without-input-grad",
        "sp.linear_backward(X, W, dY, need_input_grad=False, out_dx=np.empty_like(X))",
        ValueError, "out_dx", "need_input_grad", "False"),
    # ------------------------------------------------------------ SparseConvWeight
    Row("convweight-shape-beyond-int32",
        "sp.SparseConvWeight.from_dense(np.broadcast_to(f32(0), (1, 2**12, 2**10, 2**10)))",
        ValueError, "shape", "at most 2147483647", "(1, 4096, 1024, 1024)", crash=True),
    Row("convweight-out-channels-beyond-int32",
        "sp.SparseConvWeight.from_dense(np.broadcast_to(f32(0), (2**31, 1, 1, 1)))",
        ValueError, "shape", "at most 2147483647", "(2147483648, 1, 1, 1)", crash=True),
    Row("convweight-och-2d", "sp.SparseConvWeight(CW.data, CW.och[None], CW.ich, CW.krow, "
        "CW.kcol, CW.shape)", ValueError, "och", "1-D", "(1, 5)", crash=True),
    Row("convweight-krow-kcol-lengths", "sp.SparseConvWeight(CW.data, CW.och, CW.ich, CW.krow, "
        "CW.kcol[:-1], CW.shape)", ValueError, "krow and kcol", "same length", "108 and 107",
        crash=True),
    Row("convweight-shape-float", "sp.SparseConvWeight(CW.data, CW.och, CW.ich, CW.krow, "
        "CW.kcol, (4.0, 3, 3, 3))", TypeError, "shape", "4 non-negative integers",
        "(4.0, 3, 3, 3)", crash=True),
    Row("convweight-data-big-endian", "sp.SparseConvWeight(CW.data.astype('>f8'), CW.och, "
        "CW.ich, CW.krow, CW.kcol, CW.shape)", TypeError, "data", "float32 or float64", ">f8",
        crash=True),
    Row("convweight-astype-int", "CW.astype(np.int16)",
        TypeError, "dtype", "float32 or float64", "int16"),
    Row("convweight-from-dense-complex", "sp.SparseConvWeight.from_dense(np.ones((1, 1, 3, 3), "
        "np.complex64))", TypeError, "array", "float32 or float64", "complex64"),
    # ------------------------------------------------------------ conv2d_forward / backward
    Row("conv2d-W-csr", "sp.conv2d_forward(XC, W)",
        TypeError, "W", "SparseConvWeight", "CSRMatrix", crash=True),
    Row("conv2d-X-5d", "sp.conv2d_forward(np.ones((1, 2, 3, 8, 8), f32), CW)",
        ValueError, "X", "4-D", "(1, 2, 3, 8, 8)", crash=True),
    Row("conv2d-X-float16", "sp.conv2d_forward(XC.astype(np.float16), CW)",
        TypeError, "X", "float32", "float16", crash=True),
    Row("conv2d-stride-zero-width", "sp.conv2d_backward(XC, CW, dYC, stride=(1, 0))",
        ValueError, "stride", "positive (>= 1)", "(1, 0)", crash=True),
    Row("conv2d-stride-empty", "sp.conv2d_forward(XC, CW, stride=[])",
        TypeError, "stride", "an int or a pair of ints", "[]"),
    Row("conv2d-stride-array", "sp.conv2d_forward(XC, CW, stride=np.array([1, 1]))",
        TypeError, "stride", "an int or a pair of ints", "array([1, 1])"),
    Row("conv2d-padding-three", "sp.conv2d_forward(XC, CW, padding=(1, 2, 3))",
        TypeError, "padding", "an int or a pair of ints", "(1, 2, 3)"),
    Row("conv2d-padding-negative-pair", "sp.conv2d_forward(XC, CW, padding=(-1, 0))",
        ValueError, "padding", "non-negative", "(-1, 0)", crash=True),
    Row("conv2d-padding-upper-case", "sp.conv2d_forward(XC, CW, padding='SAME')",
        ValueError, "padding", "'same', 'valid'", "'SAME'"),
    Row("conv2d-padding-float", "sp.conv2d_forward(XC, CW, padding=1.5)",
        TypeError, "padding", "an int or a pair of ints", "1.5"),
    Row("conv2d-dilation-negative", "sp.conv2d_forward(XC, CW, dilation=-1)",
        ValueError, "dilation", "positive (>= 1)", "-1", crash=True),
    Row("conv2d-dilation-zero-width", "sp.conv2d_backward(XC, CW, dYC, dilation=(1, 0))",
        ValueError, "dilation", "positive (>= 1)", "(1, 0)", crash=True),
    Row("conv2d-groups-bool", "sp.conv2d_forward(XC, CW, groups=True)",
        TypeError, "groups", "positive integer", "True"),
    Row("conv2d-groups-not-dividing-in-channels",
        "sp.conv2d_forward(XC, conv_w((4, 1, 3, 3)), groups=2)",
        ValueError, "X has 3 channels", "expects 2", "groups=2", crash=True),
    Row("conv2d-groups-more-than-channels",
        "sp.conv2d_backward(XC, conv_w((8, 1, 3, 3)), np.ones((2, 8, 6, 6), f32), groups=8)",
        ValueError, "X has 3 channels", "expects 8", "groups=8", crash=True),
    Row("conv2d-kernel-wider-than-input", "sp.conv2d_backward(np.ones((2, 3, 8, 2), f32), CW, "
        "np.ones((2, 4, 6, 1), f32))", ValueError, "kernel (3x3",
        "larger than the padded input", "(8x2", crash=True),
    Row("conv2d-kernel-larger-valid", "sp.conv2d_forward(np.ones((2, 3, 2, 2), f32), CW, "
        "padding='valid')", ValueError, "kernel (3x3", "larger than the padded input", "(2x2",
        crash=True),
    Row("conv2d-dilation-beyond-int64", "sp.conv2d_forward(XC, CW, dilation=2**62)",
        ValueError, "kernel (3x3, dilation", "larger than the padded input",
        "spans 9223372036854775809x", crash=True),
    Row("conv2d-padding-beyond-int64", "sp.conv2d_forward(XC, CW, padding=2**62)",
        ValueError, "padding=4611686018427387904", "64-bit offsets",
        "(2, 4, 9223372036854775814, 9223372036854775814)", crash=True),
    Row("conv2d-packed-input-beyond-int64",
        "sp.conv2d_forward(wide_rows((1, 2**18, 2**20, 2**20)), conv_w((1, 2**18, 1, 1)), "
        "stride=2**10, algorithm='batch_last')", ValueError,
        "X of shape (batch, 262144, 1048576, 1048576)", "64-bit offsets",
        # the byte count depends on the ISA's lanes (batch-last units)
        "bytes of packed buffers per thread task", crash=True),
    Row("conv2d-dY-int", "sp.conv2d_backward(XC, CW, dYC.astype(np.int32))",
        TypeError, "dY", "float32", "int32", crash=True),
    Row("conv2d-dY-missing-batch", "sp.conv2d_backward(XC, CW, dYC[0])",
        ValueError, "dY", "expected (2, 4, 6, 6)", "(4, 6, 6)", crash=True),
    Row("conv2d-dY-batch-for-unbatched-X", "sp.conv2d_backward(XC[0], CW, dYC[:1])",
        ValueError, "dY", "expected (4, 6, 6)", "(1, 4, 6, 6)", crash=True),
    Row("conv2d-bias-2d", "sp.conv2d_forward(XC, CW, np.ones((4, 1), f32))",
        ValueError, "bias", "(4,)", "(4, 1)", crash=True),
    Row("conv2d-n-threads-float", "sp.conv2d_forward(XC, CW, n_threads=2.0)",
        TypeError, "n_threads", "positive integer", "2.0"),
    Row("conv2d-backward-n-threads-zero", "sp.conv2d_backward(XC, CW, dYC, n_threads=0)",
        ValueError, "n_threads", "positive integer", "got 0"),
    Row("conv2d-out-not-contiguous",
        "sp.conv2d_forward(XC, CW, padding=1, out=np.empty((2, 4, 8, 8), f32).swapaxes(2, 3))",
        ValueError, "out", "C-contiguous", "strides"),
    Row("conv2d-out-dx-is-X", "sp.conv2d_backward(XC, CW, dYC, out_dx=XC)",
        ValueError, "out_dx", "separate array", "shares memory with X"),
    Row("conv2d-algorithm-X-shape-short", "sp.conv2d_algorithm((8, 8), CW)",
        ValueError, "X_shape", "4 (or 3) entries", "(8, 8)"),
    Row("conv2d-algorithm-X-shape-str", "sp.conv2d_algorithm('abc', CW)",
        TypeError, "X_shape", "4 (or 3) ints", "'abc'"),
    # ------------------------------------------------------------ torch layers
    Row("torch-linear-n-threads-zero", "spt.SparseLinear(8, 4, n_threads=0)",
        ValueError, "n_threads", "positive integer", "got 0"),
    Row("torch-linear-n-threads-negative", "spt.SparseLinear.from_dense(nn.Linear(8, 4), "
        "n_threads=-2)", ValueError, "n_threads", "positive integer", "got -2"),
    Row("torch-conv-n-threads-float", "spt.SparseConv2d(3, 4, 3, n_threads=1.5)",
        TypeError, "n_threads", "positive integer", "1.5"),
    Row("torch-conv-n-threads-set-later", "setattr(conv, 'n_threads', 0) or conv(xc)",
        ValueError, "n_threads", "positive integer", "got 0"),
    Row("torch-linear-in-features-beyond-int32", "spt.SparseLinear(2**31, 1)",
        ValueError, "in_features", "at most 2147483647", "2147483648", crash=True),
    Row("torch-conv-columns-beyond-int32", "spt.SparseConv2d(2**16, 1, 2**8)",
        ValueError, "in_channels // groups * kernel_h * kernel_w", "at most 2147483647",
        "4294967296", crash=True),
    Row("torch-linear-input-sparse", "lin(x.to_sparse())",
        TypeError, "input", "dense (strided)", "sparse_coo", crash=True),
    Row("torch-linear-input-bool", "lin(x.bool())",
        TypeError, "input", "float32 or float64", "torch.bool", crash=True),
    Row("torch-linear-layer-on-meta", "spt.SparseLinear(8, 4).to('meta')(x)",
        ValueError, "SparseLinear weights", "CPU only", "meta"),
    Row("torch-conv-input-meta", "conv(xc.to('meta'))",
        ValueError, "input", "CPU only", "meta"),
    Row("torch-conv-input-int", "conv(xc.int())",
        TypeError, "input", "float32 or float64", "torch.int32", crash=True),
    Row("torch-conv-input-float64", "conv(xc.double())",
        TypeError, "input has dtype torch.float64", "torch.float32", "torch.float64", crash=True),
    Row("torch-conv-input-2d", "conv(torch.ones(3, 8))",
        ValueError, "input", "(N, 3, H, W)", "(3, 8)", crash=True),
    Row("torch-conv-input-channels", "conv(torch.ones(2, 5, 8, 8))",
        ValueError, "input", "(N, 3, H, W)", "(2, 5, 8, 8)", crash=True),
    Row("torch-conv-input-smaller-than-kernel", "spt.SparseConv2d(3, 4, 5)(torch.ones(2, 3, 3, 3))",
        ValueError, "kernel (5x5", "larger than the padded input", "(3x3", crash=True),
    Row("torch-conv-stride-zero", "spt.SparseConv2d(3, 4, 3, stride=(2, 0))(xc)",
        ValueError, "stride", "positive (>= 1)", "(2, 0)", crash=True),
    Row("torch-from-dense-meta", "spt.SparseLinear.from_dense(nn.Linear(8, 4, device='meta'))",
        ValueError, "module.weight", "CPU only", "meta"),
    Row("torch-from-dense-half", "spt.SparseConv2d.from_dense(nn.Conv2d(3, 4, 3).half())",
        TypeError, "module.weight", "float32 or float64", "torch.float16"),
    Row("torch-regrow-negative", "lin.regrow_(-1, torch.zeros(4, 8))",
        ValueError, "n", "non-negative", "-1"),
    Row("torch-prune-sparsity", "lin.prune_(1.5)",
        ValueError, "sparsity", "[0, 1]", "1.5"),
    # ------------------------------------------------------------ torch custom ops
    Row("op-n-threads-negative", "ops.linear(x, v, p, i, 8, None, -1)",
        ValueError, "n_threads", "0 (meaning torch.get_num_threads()) or a positive integer",
        "got -1"),
    Row("op-indptr-int32", "ops.linear(x, v, p.int(), i, 8, None, 1)",
        TypeError, "indptr", "1-D int64", "torch.int32", crash=True),
    Row("op-values-length", "ops.linear(x, v[:-1], p, i, 8, None, 1)",
        ValueError, "values", "(32,)", "(31,)", crash=True),
    Row("op-indptr-short", "ops.linear(x, v, p[:-1], i, 8, None, 1)",
        ValueError, "indptr[-1] (=24)", "must equal the number of stored values",
        "len(indices)=32", crash=True),
    Row("op-indices-unsorted", "ops.linear(x, v, p, i.flip(0), 8, None, 1)",
        ValueError, "indices of row 0", "sorted", "got 7 then 6", crash=True),
    Row("op-indices-negative", "ops.linear(x, v, p, i - 1, 8, None, 1)",
        ValueError, "indices[0]=-1", "out of range", "8 columns", crash=True),
    Row("op-in-features-mismatch", "ops.linear_backward(x, v, p, i, 9, torch.ones(2, 4), True, 1)",
        ValueError, "X has shape (2, 8)", "expects (..., 9)", "(2, 8)", crash=True),
    Row("op-grad-output-float64", "ops.linear_backward(x, v, p, i, 8, torch.ones(2, 4, "
        "dtype=torch.float64), True, 1)", TypeError, "grad_output",
        "but the input has dtype torch.float32", "torch.float64", crash=True),
    Row("op-bias-float64", "ops.linear(x, v, p, i, 8, torch.ones(4, dtype=torch.float64), 1)",
        TypeError, "bias", "torch.float32", "torch.float64", crash=True),
    Row("op-mixed-devices", "ops.linear(x, v, p, i.to('meta'), 8, None, 1)",
        ValueError, "indices", "one device", "meta", crash=True),
    Row("op-mixed-devices-input", "ops.conv2d(xc.to('meta'), cv, cp, ci, [4, 3, 3, 3], None, "
        "C, C, C, 1, 'auto', 1)", ValueError, "values", "one device", "is on cpu", crash=True),
    Row("op-conv-weight-shape-3", "ops.conv2d(xc, cv, cp, ci, [4, 3, 3], None, C, C, C, 1, "
        "'auto', 1)", ValueError, "weight_shape", "4 non-negative integers", "[4, 3, 3]",
        crash=True),
    Row("op-conv-weight-shape-mismatch", "ops.conv2d(xc, cv, cp, ci, [4, 3, 3, 2], None, C, C, "
        "C, 1, 'auto', 1)", ValueError, "indices[18]=18", "out of range", "18 columns",
        crash=True),
    Row("op-conv-input-3d", "ops.conv2d(xc[0], cv, cp, ci, [4, 3, 3, 3], None, C, C, C, 1, "
        "'auto', 1)", ValueError, "input", "4-D (N, C, H, W)", "(3, 8, 8)", crash=True),
    Row("op-conv-groups-not-dividing", "ops.conv2d(xc, cv, cp, ci, [4, 3, 3, 3], None, C, C, C, "
        "2, 'auto', 1)", ValueError, "X has 3 channels", "expects 6", "groups=2", crash=True),
    Row("op-conv-grad-output-shape", "ops.conv2d_backward(xc, cv, cp, ci, [4, 3, 3, 3], "
        "torch.ones(2, 4, 8, 7), C, C, C, 1, True, 'auto', 1)", ValueError, "dY",
        "expected (2, 4, 8, 8)", "(2, 4, 8, 7)", crash=True),
    Row("op-conv-stride-negative", "ops.conv2d(xc, cv, cp, ci, [4, 3, 3, 3], None, [-1, 1], C, "
        "C, 1, 'auto', 1)", ValueError, "stride", "positive (>= 1)", "(-1, 1)", crash=True),
    Row("op-conv-dilation-zero", "ops.conv2d_backward(xc, cv, cp, ci, [4, 3, 3, 3], "
        "torch.ones(2, 4, 8, 8), C, C, [0, 0], 1, True, 'auto', 1)", ValueError, "dilation",
        "positive (>= 1)", "(0, 0)", crash=True),
    Row("op-conv-algorithm", "ops.conv2d(xc, cv, cp, ci, [4, 3, 3, 3], None, C, C, C, 1, "
        "'fastest', 1)", ValueError, "algorithm", "'auto', 'batch_last', 'over_width'",
        "'fastest'"),
    # ------------------------------------------------------------ round two (issue 19)
    # Structure that changes after validation: the validated index arrays live in
    # immutable memory; W.data is checked on every call (O(1)); layer attributes too.
    Row("csr-indices-writeable-again", "M = W.copy(); M.indices.flags.writeable = True",
        ValueError, "WRITEABLE flag", "cannot set", "to True", crash=True),
    Row("csc-indptr-writeable-again", "M = W.to_csc(); M.indptr.flags.writeable = True",
        ValueError, "WRITEABLE flag", "cannot set", "to True", crash=True),
    Row("convweight-krow-writeable-again", "M = CW.copy(); M.krow.flags.writeable = True",
        ValueError, "WRITEABLE flag", "cannot set", "to True", crash=True),
    Row("csr-data-reinterpreted", "M = sp.CSRMatrix.from_dense(np.ones((4, 4), f32)); "
        "M.data.dtype = np.float64; sp.linear_forward(np.ones((2, 4)), M)",
        ValueError, "W.data", "shape (16,)", "dtype float64, shape (8,)", crash=True),
    Row("csr-data-reshaped", "M = W.copy(); M.data.shape = (1, 3); sp.linear_backward(X, M, dY)",
        ValueError, "W.data", "shape (3,)", "shape (1, 3)", crash=True),
    Row("csr-data-resized", "M = W.copy(); M.data.resize(1, refcheck=False); "
        "sp.linear_forward(X, M)", ValueError, "W.data", "shape (3,)", "shape (1,)", crash=True),
    Row("convweight-data-reshaped", "M = CW.copy(); M.data.shape = (4, 27); "
        "sp.conv2d_backward(XC, M, dYC)", ValueError, "W.data", "shape (108,)",
        "shape (4, 27)", crash=True),
    Row("torch-index-written-through-data", "l = spt.SparseLinear(8, 4); l(x); "
        "l.indices.data[0] = 9; l(x)", ValueError, "indices[0]=9", "out of range", "8 columns",
        crash=True),
    Row("torch-linear-in-features-reassigned", "l = spt.SparseLinear(8, 4); l.in_features = 100; "
        "l(torch.ones(2, 100))", ValueError, "in_features", "build a new layer",
        "(100, 4, (4, 8))", crash=True),
    Row("torch-conv-kernel-size-reassigned", "c = spt.SparseConv2d(3, 4, 3); "
        "c.kernel_size = (5, 5); c(xc)", ValueError, "SparseConv2d.kernel_size",
        "kernel_size=(3, 3)", "(5, 5)", crash=True),
    Row("torch-conv-in-channels-reassigned", "c = spt.SparseConv2d(3, 4, 3); c.in_channels = 6; "
        "c(torch.ones(2, 6, 8, 8))", ValueError, "SparseConv2d.in_channels", "in_channels=3",
        "set to 6", crash=True),
    Row("torch-conv-dilation-reassigned-zero", "c = spt.SparseConv2d(3, 4, 3); c.dilation = 0; "
        "c(xc)", ValueError, "dilation", "positive (>= 1)", "(0, 0)", crash=True),
    # Thread counts beyond the machine: clamped to max_threads(), an error past 2**16.
    Row("linear-n-threads-beyond-any-machine", "sp.linear_forward(X, W, n_threads=10**6)",
        ValueError, "n_threads", "at most 65536", "got 1000000", crash=True),
    Row("conv2d-backward-n-threads-2**40", "sp.conv2d_backward(XC, CW, dYC, n_threads=2**40)",
        ValueError, "n_threads", "at most 65536", "got 1099511627776", crash=True),
    Row("torch-layer-n-threads-huge", "spt.SparseConv2d(3, 4, 3, n_threads=10**5)",
        ValueError, "n_threads", "at most 65536", "got 100000"),
    Row("op-n-threads-huge", "ops.linear(x, v, p, i, 8, None, 10**6)",
        ValueError, "n_threads", "at most 65536", "got 1000000", crash=True),
    Row("sparsify-n-threads-huge", "spt.sparsify(nn.Linear(8, 4), x, n_threads=10**6)",
        ValueError, "n_threads", "at most 65536", "got 1000000", crash=True),
    # Aliasing: out= / out_dx= may not overlap the weight's values either.
    Row("linear-out-is-weight-values", "M = sp.CSRMatrix.from_dense(np.ones((4, 3), f32)); "
        "sp.linear_forward(X, M, out=M.data[:8].reshape(2, 4))",
        ValueError, "out", "separate array", "shares memory with W.data"),
    Row("linear-out-dx-is-weight-values", "M = sp.CSRMatrix.from_dense(np.ones((4, 3), f32)); "
        "sp.linear_backward(X, M, dY, out_dx=M.data[:6].reshape(2, 3))",
        ValueError, "out_dx", "separate array", "shares memory with W.data"),
    Row("conv2d-out-is-weight-values", "M = CW.copy(); sp.conv2d_forward(XC[:1, :, :3, :3], M, "
        "out=M.data[:4].reshape(1, 4, 1, 1))",
        ValueError, "out", "separate array", "shares memory with W.data"),
    Row("conv2d-out-dx-is-weight-values", "M = CW.copy(); sp.conv2d_backward(XC[:1, :, :3, :3], "
        "M, np.ones((1, 4, 1, 1), f32), out_dx=M.data[:27].reshape(1, 3, 3, 3))",
        ValueError, "out_dx", "separate array", "shares memory with W.data"),
    # Torch tensor kinds.
    Row("torch-linear-input-nested", "lin(torch.nested.nested_tensor([x[0], x[1]]))",
        TypeError, "input", "dense (strided)", "nested tensor", crash=True),
    Row("csr-from-torch-bfloat16", "sp.CSRMatrix.from_torch(torch.ones(2, 2, "
        "dtype=torch.bfloat16))", TypeError, "tensor", "float32 or float64", "torch.bfloat16"),
    Row("csc-from-torch-sparse-bfloat16", "sp.CSCMatrix.from_torch(torch.ones(2, 2, "
        "dtype=torch.bfloat16).to_sparse_csc())", TypeError, "tensor", "float32 or float64",
        "torch.bfloat16"),
    Row("csr-from-torch-complex32", "sp.CSRMatrix.from_torch(torch.ones(2, 2, "
        "dtype=torch.complex32))", TypeError, "tensor", "float32 or float64", "torch.complex32"),
    # Untrusted checkpoints: every entry is checked before it is looked into.
    Row("ckpt-weight-shape-scalar", "lin.load_state_dict({**lin.state_dict(), "
        "'weight_shape': torch.tensor(5)})", RuntimeError, "weight_shape",
        "1-D integer tensor of 2 sizes", "got shape ()"),
    Row("ckpt-weight-shape-list", "lin.load_state_dict({**lin.state_dict(), "
        "'weight_shape': [4, 8]})", RuntimeError, "weight_shape", "a torch.Tensor", "got list"),
    Row("ckpt-weight-shape-float", "lin.load_state_dict({**lin.state_dict(), "
        "'weight_shape': torch.tensor([4.0, 8.0])})", RuntimeError, "weight_shape",
        "integer tensor", "torch.float32"),
    Row("ckpt-indices-list", "lin.load_state_dict({**lin.state_dict(), "
        "'indices': list(range(32))})", RuntimeError, "indices", "a torch.Tensor", "got list"),
    Row("ckpt-dense-weight-list", "lin.load_state_dict({'weight': [[1.0] * 8] * 4, "
        "'bias': torch.ones(4)})", RuntimeError, "weight", "a torch.Tensor", "got list"),
    Row("ckpt-partial-indices-unsorted", "lin.load_state_dict({'indices': lin.indices.flip(0)}, "
        "strict=False)", RuntimeError, "indices of row 0", "sorted", "got 7 then 6"),
    Row("ckpt-spt-weight-shape-3", "spt.load_state_dict(nn.Sequential(nn.Linear(8, 4)), "
        "{'0.' + k: t for k, t in {**lin.state_dict(), 'weight_shape': torch.tensor([4, 8, 1])}"
        ".items()})", RuntimeError, "0.weight_shape", "2 sizes", "got shape (3,)"),
    # Messages: SciPy's C++ never sees an unchecked structure.
    Row("csr-from-scipy-indptr-not-monotone", "sp.CSRMatrix.from_scipy(sps.csr_array(("
        "np.ones(2, f32), np.array([0, 1]), np.array([0, 2, 1])), shape=(2, 2)))",
        ValueError, "matrix.indptr", "non-decreasing", "indptr[1]=2 > indptr[2]=1", crash=True),
    Row("csc-from-scipy-csr-indptr-not-monotone", "sp.CSCMatrix.from_scipy(sps.csr_matrix(("
        "np.ones(2, f32), np.array([0, 1]), np.array([0, 2, 1])), shape=(2, 2)))",
        ValueError, "matrix.indptr", "non-decreasing", "indptr[1]=2 > indptr[2]=1", crash=True),
    Row("csr-from-scipy-indices-out-of-range", "sp.CSRMatrix.from_scipy(sps.csr_array(("
        "np.ones(2, f32), np.array([0, 5]), np.array([0, 1, 2])), shape=(2, 2)))",
        ValueError, "matrix.indices[1]=5", "out of range", "2 columns", crash=True),
]

IN_PROCESS = [r for r in ROWS if not r.crash]
CRASH_PRONE = [r for r in ROWS if r.crash]


def check_message(row, exc_type, message):
    assert exc_type == row.exc.__name__, (
        f"{row.id}: raised {exc_type} ({message!r}); expected {row.exc.__name__}")
    for what in ("arg", "expected", "got"):
        fragment = getattr(row, what)
        assert fragment in message, (
            f"{row.id}: the message does not name the {what} ({fragment!r}): {message!r}")


# ---------------------------------------------------------------- in this process

@pytest.fixture(scope="module")
def namespace():
    ns = {}
    exec(SETUP, ns)
    return ns


@pytest.fixture(scope="module")
def torch_namespace(namespace):
    pytest.importorskip("torch")
    ns = dict(namespace)
    exec(TORCH_SETUP, ns)
    return ns


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("row", IN_PROCESS, ids=[r.id for r in IN_PROCESS])
def test_bad_input(row, request):
    ns = request.getfixturevalue("torch_namespace" if row.torch else "namespace")
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is checked below
        exec(row.call, dict(ns))  # a copy: names a row assigns do not leak
    check_message(row, type(info.value).__name__, str(info.value))


# ---------------------------------------------------------------- in a child process

WORKER = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
if "asan" not in os.environ.get("LD_PRELOAD", ""):  # ASan reserves terabytes of address space
    import resource
    cap = 6 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
rows = json.loads(sys.stdin.read())
ns = {}
exec(SETUP, ns)
if any(r["torch"] for r in rows):
    exec(TORCH_SETUP, ns)
for r in rows:
    print("START " + r["id"], flush=True)
    try:
        exec(r["call"], dict(ns))
        out = {"id": r["id"], "type": None, "message": "no exception"}
    except BaseException as e:
        out = {"id": r["id"], "type": type(e).__name__, "message": str(e)}
    print("RESULT " + json.dumps(out), flush=True)
"""


def run_in_children(rows, timeout=300, env=None):
    """{row id: (exception type or None, message)}; a child that dies is
    restarted with the rows after the one it died on."""
    results = {}
    pending = list(rows)
    while pending:
        payload = json.dumps([{"id": r.id, "call": r.call, "torch": r.torch} for r in pending])
        code = f"SETUP = {SETUP!r}\nTORCH_SETUP = {TORCH_SETUP!r}\n{WORKER}"
        with tempfile.TemporaryDirectory() as cwd:  # not the repository root (shadowing)
            proc = subprocess.run([sys.executable, "-c", code], input=payload,
                                  capture_output=True, text=True, cwd=cwd, timeout=timeout,
                                  env=env)
        started = None
        for line in proc.stdout.splitlines():
            if line.startswith("START "):
                started = line[6:]
            elif line.startswith("RESULT "):
                out = json.loads(line[7:])
                results[out["id"]] = (out["type"], out["message"])
                started = None
        if started is None:
            if proc.returncode != 0 and len(results) < len(rows):
                raise AssertionError(f"the child failed before any row:\n{proc.stderr[-3000:]}")
            break
        results[started] = ("crashed", f"the child died (exit status {proc.returncode}) "
                                       f"running this row:\n{proc.stderr[-3000:]}")
        done = set(results)
        pending = [r for r in pending if r.id not in done]
    return results


@pytest.fixture(scope="module")
def child_results():
    rows = CRASH_PRONE
    try:
        import torch  # noqa: F401
    except ImportError:
        rows = [r for r in rows if not r.torch]
    return run_in_children(rows)


@pytest.mark.parametrize("row", CRASH_PRONE, ids=[r.id for r in CRASH_PRONE])
def test_bad_input_in_child_process(row, child_results):
    if row.id not in child_results:
        pytest.skip("needs torch")
    exc_type, message = child_results[row.id]
    assert exc_type != "crashed", f"{row.id}: {message}"
    check_message(row, exc_type, message)


def test_a_crash_fails_its_row_only():
    """The child-process machinery itself: a segfaulting row is reported as
    crashed, and the rows after it still run."""
    rows = [Row("fine-before", "sp.linear_forward(X, W, n_threads=0)", ValueError,
                "n_threads", "positive", "0"),
            Row("segfault", "__import__('ctypes').string_at(0)", ValueError, "", "", ""),
            Row("fine-after", "sp.linear_forward(X, W, n_threads=-1)", ValueError,
                "n_threads", "positive", "-1")]
    env = dict(os.environ)
    if "ASAN_OPTIONS" in env:  # under .ci/sanitize: a plain SIGSEGV, not a report
        env["ASAN_OPTIONS"] += ":handle_segv=0"
    results = run_in_children(rows, env=env)
    assert results["segfault"][0] == "crashed"
    assert results["fine-before"][0] == results["fine-after"][0] == "ValueError"


# ---------------------------------------------------------------- hostile sequences

class Script(NamedTuple):
    """A hostile *sequence* of calls that must end well: each runs in its own child
    process (a crash fails it alone) and asserts the right result or the right
    error itself.  ``env`` is added to the child's environment."""
    id: str
    what: str       # one line for docs/bad-inputs.md
    code: str
    env: dict = {}


SCRIPT_SETUP = """
import json, pathlib, tempfile
import numpy as np, torch, torch.nn.functional as F
from torch import nn
import sparseprop as sp, sparseprop.torch as spt
gen = torch.Generator().manual_seed(0)
x = torch.randn(3, 8, generator=gen)
xc = torch.randn(2, 3, 8, 8, generator=gen)
def close(a, b):
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-5), (a - b).abs().max()
def raises(fn, exc, fragment):
    try:
        fn()
    except exc as e:
        assert fragment in str(e), str(e)
        return
    raise AssertionError(f"no {exc.__name__}")
"""

SCRIPTS = [
    Script("layers-built-under-inference-mode",
           "layers built under torch.inference_mode() work outside it (forward, backward "
           "into the input) and inside it", """
with torch.inference_mode():
    lin = spt.SparseLinear(8, 4, sparsity=0.5, generator=gen)
    conv = spt.SparseConv2d(3, 4, 3, padding=1, sparsity=0.5, generator=gen)
for layer, inp in ((lin, x), (conv, xc)):
    xi = inp.clone().requires_grad_()
    y = layer(xi)
    close(y, layer.to_dense()(inp))
    y.sum().backward()
    assert xi.grad is not None and xi.grad.shape == inp.shape
    with torch.inference_mode():
        close(layer(inp), y.detach())
"""),
    Script("index-buffer-written-behind-torch",
           "a layer's index buffer rewritten through a NumPy view (no _version bump) is seen: "
           "the result follows the new structure", """
lin = spt.SparseLinear(8, 4, sparsity=0.5, generator=gen)
lin(x)
n = lin.indices.numpy()
r0 = int(lin.indptr[1])
n[:r0] = np.arange(8 - r0, 8)   # row 0 moves to its last columns: valid, sorted
close(lin(x), F.linear(x, lin.dense_weight(), lin.bias))
"""),
    Script("inference-index-buffer-written",
           "an inference-mode layer's index buffer changed inside inference mode (inference "
           "tensors have no version counter) is seen", """
with torch.inference_mode():
    lin = spt.SparseLinear(8, 4, sparsity=0.5, generator=gen)
    lin(x)
    r0 = int(lin.indptr[1])
    lin.indices[:r0] = torch.arange(8 - r0, 8, dtype=torch.int32)
    close(lin(x), F.linear(x, lin.dense_weight(), lin.bias))
"""),
    Script("index-buffer-written-between-forward-and-backward",
           "an index buffer rewritten behind torch's back between a forward and its backward "
           "(linear, conv, a layer built under inference mode): the backward raises, and so "
           "does a pending backward after a later forward saw the change; never the new "
           "structure paired with the old input", """
def move_row0(layer, to_end):   # row 0 to its first / last columns: a valid, sorted structure
    n = layer.indices.numpy()
    r0 = int(layer.indptr[1])
    cols = layer.in_features if isinstance(layer, spt.SparseLinear) else int(
        np.prod(layer.weight_shape[1:]))
    before = n[:r0].copy()
    n[:r0] = np.arange(cols - r0, cols) if to_end else np.arange(r0)
    assert 0 < r0 < cols and not np.array_equal(before, n[:r0])
with torch.inference_mode():
    lin_inf = spt.SparseLinear(8, 4, sparsity=0.5, generator=gen)
for make, inp in ((lambda: spt.SparseLinear(8, 4, sparsity=0.5, generator=gen), x),
                  (lambda: spt.SparseConv2d(3, 4, 3, sparsity=0.5, generator=gen), xc),
                  (lambda: lin_inf, x)):
    layer = make()
    xi = inp.clone().requires_grad_()
    y = layer(xi)
    move_row0(layer, to_end=True)
    raises(lambda: y.sum().backward(), RuntimeError, "between its forward and its backward")
    y_old = layer(xi)                  # forward A (new structure validated), a write, forward B
    move_row0(layer, to_end=False)
    y_new = layer(xi)                  # sees the change and bumps the buffers' version
    raises(lambda: y_old.sum().backward(), RuntimeError,
           "between its forward and its backward" if layer is lin_inf   # no version counter
           else "modified by an inplace operation")
    y_new.sum().backward()             # the new forward's own backward is right
    ref = xi.detach().clone().requires_grad_()
    layer.to_dense()(ref).sum().backward()
    close(xi.grad, ref.grad)
"""),
    Script("mask-changed-between-forward-and-backward",
           "set_mask_ (same nnz) / prune_ between a forward and its backward: torch's "
           "'modified by an inplace operation', never new values paired with the old "
           "structure", """
lin = spt.SparseLinear(8, 4, sparsity=0.5, generator=gen)
y = lin(x)
lin.set_mask_(lin.mask().flip(1))
raises(lambda: y.sum().backward(), RuntimeError, "modified by an inplace operation")
conv = spt.SparseConv2d(3, 4, 3)
y = conv(xc)
conv.prune_(0.5)
raises(lambda: y.sum().backward(), RuntimeError, "modified by an inplace operation")
y = conv(xc)                                   # after the change: fine again
y.sum().backward()
"""),
    Script("conv-geometry-reassigned",
           "SparseConv2d padding / padding_mode / stride / dilation reassigned after "
           "construction take effect (like nn.Conv2d), checked against a fresh dense conv", """
conv = spt.SparseConv2d(3, 4, 3, padding=1, sparsity=0.5, generator=gen)
for attr, value in (("padding", 2), ("padding_mode", "reflect"), ("stride", 2),
                    ("dilation", (2, 1)), ("padding", "same"), ("padding_mode", "zeros")):
    if attr == "padding" and value == "same":
        conv.stride = 1
    setattr(conv, attr, value)
    close(conv(xc), conv.to_dense()(xc))
"""),
    Script("zero-out-features-backward",
           "layers with 0 out_features / out_channels (and a bias) run forward and backward", """
lin = spt.SparseLinear(8, 0)
xi = x.clone().requires_grad_()
lin(xi).sum().backward()
assert torch.equal(xi.grad, torch.zeros_like(x)) and lin.bias.grad.shape == (0,)
xi = x[0].clone().requires_grad_()
lin(xi).sum().backward()
conv = spt.SparseConv2d(3, 0, 3)
xi = xc.clone().requires_grad_()
conv(xi).sum().backward()
assert torch.equal(xi.grad, torch.zeros_like(xc)) and conv.bias.grad.shape == (0,)
"""),
    Script("autotune-cache-corrupted",
           "every kind of corrupt tuning-cache entry (not JSON, a list, missing or "
           "non-numeric fields, an unknown algorithm, NaN, deep nesting) is ignored, "
           "re-measured and rewritten", """
d = tempfile.mkdtemp()
model = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 8))
with torch.no_grad():
    for m in (model[0], model[2]):
        m.weight[torch.rand(m.weight.shape, generator=gen) < 0.9] = 0
inp = torch.randn(2, 4, 6, 6, generator=gen)
spt.sparsify(model, inp, cache_dir=d, repeats=1, warmup=0)
files = sorted(pathlib.Path(d).glob("*.json"))
assert len(files) == 2
good = [json.loads(f.read_text()) for f in files]
def bad_result(e, change):
    e = json.loads(json.dumps(e)); change(e["result"]); return json.dumps(e)
corruptions = [
    lambda e: "\\xff not json", lambda e: "[1, 2]", lambda e: "null",
    lambda e: json.dumps({"key": e["key"], "result": [1]}),
    lambda e: bad_result(e, lambda r: r.pop("best")),
    lambda e: bad_result(e, lambda r: r.update(dense_s="fast")),
    lambda e: bad_result(e, lambda r: r.update(dense_s=float("nan"))),
    lambda e: bad_result(e, lambda r: r.update(best="fastest")),
    lambda e: bad_result(e, lambda r: r.update(sparse_s={"fastest": 0.0})),
    lambda e: bad_result(e, lambda r: r.update(sparse_s=-1)),
    lambda e: "[" * 100000 + "]" * 100000,
]
for corrupt in corruptions:
    for f, e in zip(files, good):
        f.write_text(corrupt(e))
    out, report = spt.sparsify(model, inp, cache_dir=d, repeats=1, warmup=0)
    assert not any(r.cached for r in report.layers), report
    out(inp)
    for f in files:                                 # rewritten, well-formed
        r = json.loads(f.read_text())["result"]
        assert r["best"] in r["sparse_s"]
"""),
    Script("omp-num-threads-huge",
           "OMP_NUM_THREADS=1000000: the default thread count is clamped to max_threads(); "
           "the NumPy API and the layers run", """
from sparseprop import _config
assert _config.resolve_n_threads(None) <= _config.max_threads()
W = sp.CSRMatrix.from_dense(np.ones((256, 256), np.float32))
sp.linear_forward(np.ones((512, 256), np.float32), W)
assert _config.last_team_size() <= _config.max_threads()
spt.SparseLinear(256, 256)(torch.ones(512, 256)).sum().backward()
""", {"OMP_NUM_THREADS": "1000000"}),
    Script("n-threads-oversubscribed-is-clamped",
           "n_threads=60000 (below the 2**16 error) runs on max_threads() threads", """
from sparseprop import _config
W = sp.CSRMatrix.from_dense(np.ones((256, 256), np.float32))
sp.linear_forward(np.ones((512, 256), np.float32), W, n_threads=60000)
assert _config.last_team_size() == _config.max_threads()
CW = sp.SparseConvWeight.from_dense(np.ones((16, 16, 3, 3), np.float32))
sp.conv2d_backward(np.ones((64, 16, 8, 8), np.float32), CW, np.ones((64, 16, 6, 6), np.float32),
                   n_threads=60000)
assert _config.last_team_size() <= _config.max_threads()
"""),
]


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.id for s in SCRIPTS])
def test_hostile_sequence_in_child_process(script):
    pytest.importorskip("torch")
    env = dict(os.environ)
    env.update(script.env)
    with tempfile.TemporaryDirectory() as cwd:  # not the repository root (shadowing)
        proc = subprocess.run([sys.executable, "-c", SCRIPT_SETUP + script.code],
                              capture_output=True, text=True, cwd=cwd, timeout=600, env=env)
    assert proc.returncode == 0, (f"{script.id}: exit status {proc.returncode}\n"
                                  f"{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- the table itself

def test_table_is_big_distinct_and_complete():
    ids = [r.id for r in ROWS]
    calls = [r.call for r in ROWS]
    assert len(ROWS) >= 40
    assert len(set(ids)) == len(ids) and len(set(calls)) == len(calls)
    for r in ROWS:
        assert r.arg and r.expected and r.got, r.id
        # load_state_dict gathers its messages into one RuntimeError (torch's way)
        allowed = (ValueError, TypeError) + ((RuntimeError,) if "load_state_dict" in r.call
                                             else ())
        assert issubclass(r.exc, allowed), r.id


def markdown():
    """The table as Markdown (the body of docs/bad-inputs.md)."""
    lines = ["| # | row | call | raises | names the argument | expected | received | child |",
             "|---|-----|------|--------|--------------------|----------|----------|-------|"]

    def cell(s):
        return "`" + s.replace("|", "\\|") + "`"

    for n, r in enumerate(ROWS, 1):
        lines.append(f"| {n} | {r.id} | {cell(r.call)} | {r.exc.__name__} | {cell(r.arg)} | "
                     f"{cell(r.expected)} | {cell(r.got)} | {'yes' if r.crash else ''} |")
    lines += ["", "Hostile sequences (tests `test_hostile_sequence_in_child_process`, each in "
              "its own child process; they must end well):", "",
              "| # | sequence | what must hold | environment |",
              "|---|----------|----------------|-------------|"]
    for n, sc in enumerate(SCRIPTS, 1):
        env = " ".join(f"`{k}={v}`" for k, v in sc.env.items())
        lines.append(f"| {n} | {sc.id} | {sc.what} | {env} |")
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- table: begin -->\n", "<!-- table: end -->\n"


def test_docs_table_is_current():
    if not DOC.exists():
        pytest.skip("docs/ is not next to tests/ (installed tests?)")
    text = DOC.read_text()
    assert BEGIN in text and END in text
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert body == markdown(), (
        "docs/bad-inputs.md is out of date: regenerate it with "
        "`python tests/test_bad_inputs.py --write-docs`")


if __name__ == "__main__":
    if "--write-docs" in sys.argv:
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOC.write_text(head + BEGIN + markdown() + END + tail)
        print(f"wrote {len(ROWS)} rows into {os.path.relpath(DOC)}")
    else:
        sys.stdout.write(markdown())
