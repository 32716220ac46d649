"""Drop-in sparse layers: :class:`SparseLinear` and :class:`SparseConv2d`.

A layer stores its weight as one trainable ``nn.Parameter`` ``values`` (the
nonzeros of the dense weight in C order - what optimizers see) and two index
buffers, ``indptr`` (int64) and ``indices`` (int32): the CSR structure of the
weight viewed as a matrix, ``(out_features, in_features)`` for linear and
``(out_channels, in_channels/groups * kh * kw)`` for conv2d.  The state_dict
also holds ``weight_shape``.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sparseprop.torch import _ops
from sparseprop.torch._optim_state import remap_optimizer_state

__all__ = ["SparseConv2d", "SparseLinear", "dense_weight_of", "weight_sparsity"]


# ---------------------------------------------------------------- pruning interop

def _parametrization_mask(module, name):
    """The product of the masks of ``name``'s parametrizations (torch.ao.pruning), or None."""
    if not parametrize.is_parametrized(module, name):
        return None
    mask = None
    for p in module.parametrizations[name]:
        m = getattr(p, "mask", None)
        if isinstance(m, torch.Tensor):
            m = m.detach().bool()
            mask = m if mask is None else mask & m
    return mask


def dense_weight_of(module, name="weight"):
    """(weight, mask) of a dense module, pruned or not, detached.

    * a plain module: ``weight`` and ``weight != 0``;
    * ``torch.nn.utils.prune``: ``weight_orig * weight_mask`` and the mask;
    * a ``torch.ao.pruning`` sparsifier's parametrization: the parametrized
      weight (mask applied) and the mask;
    * a squashed sparsifier module is a plain module.

    The mask is the structure a sparse layer keeps: an entry the mask keeps
    stays a trainable slot even if its value happens to be zero.
    """
    if hasattr(module, name + "_orig") and hasattr(module, name + "_mask"):
        orig = getattr(module, name + "_orig").detach()
        mask = getattr(module, name + "_mask").detach().bool()
        return orig * mask, mask
    pmask = _parametrization_mask(module, name)
    w = getattr(module, name).detach()
    if pmask is not None:
        w = w * pmask
        return w, pmask
    return w, w != 0


def _check_weight_size(rows, cols, what_rows, what_cols):
    """Before any dense weight is allocated: the index buffers are int32."""
    for n, what in ((rows, what_rows), (cols, what_cols)):
        if n > _ops.INT32_MAX:
            raise ValueError(f"{what} must be at most {_ops.INT32_MAX} (the sparse weight's "
                             f"indices are int32); got {n}")


# ---------------------------------------------------------------- the common base

def _entry_problem(value, kind):
    """None if a state_dict entry is a CPU-readable tensor of ``kind`` ("floating"
    or "integer"), else what is wrong with it."""
    if not isinstance(value, torch.Tensor):
        return f"expected a torch.Tensor; got {type(value).__name__}"
    if value.layout != torch.strided or value.is_nested:
        return f"expected a dense (strided) tensor; got layout {value.layout}"
    if value.device.type == "meta":
        return "expected a tensor with data; got one on the meta device"
    ok = (value.is_floating_point() if kind == "floating"
          else not value.is_floating_point() and not value.is_complex()
          and value.dtype != torch.bool)
    if not ok:
        return f"expected a {kind}-point tensor; got dtype {value.dtype}" if kind == "floating" \
            else f"expected an integer tensor; got dtype {value.dtype}"
    return None



def _swap_values_(param, new):
    """``param.data = new`` (and drop ``param.grad``), also when the length changes.

    autograd keeps one AccumulateGrad node per leaf tensor, recording the
    leaf's shape, for as long as any graph refers to it; assigning ``.data``
    of another shape keeps that node, so the next backward through the
    parameter fails ("returned an invalid gradient ... expected shape
    compatible with [old nnz]") whenever the previous step's graph is still
    alive (an ordinary ``loss`` variable holds it).  torch drops the cached
    node when ``.data`` changes dtype or device, so a length change goes
    through an empty tensor of another dtype first.  The Parameter object
    stays the same (optimizers refer to it).
    """
    if new.shape != param.shape:
        hop = torch.float64 if param.dtype != torch.float64 else torch.float32
        param.data = torch.empty(0, dtype=hop, device=param.device)
    param.data = new
    param.grad = None
    # ``.data =`` keeps the version counter: bump it, so a graph that saved the
    # old values (a forward run before a mask change) fails in backward with
    # torch's "modified by an inplace operation" instead of silently pairing
    # the new values with the old structure
    torch.autograd.graph.increment_version(param)

class _SparseLayer(nn.Module):
    """Common machinery: structure, values, state_dict, mask changes."""

    def _init_structure(self, weight, mask, dtype=None):
        """Set values/indptr/indices from a dense ``weight`` and boolean ``mask``."""
        rows = weight.shape[0]
        cols = int(np.prod(weight.shape[1:])) if weight.dim() > 1 else 0
        w2 = weight.detach().reshape(rows, cols)
        m2 = mask.reshape(rows, cols).bool()
        counts = m2.sum(1, dtype=torch.int64)
        indptr = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        nz = m2.nonzero()  # row-major order: sorted within each row
        values = w2[nz[:, 0], nz[:, 1]].to(dtype or weight.dtype).contiguous()
        self.values = nn.Parameter(values)
        self.register_buffer("indptr", indptr)
        self.register_buffer("indices", nz[:, 1].to(torch.int32).contiguous())

    # ------------------------------------------------------------ properties
    @property
    def nnz(self):
        """Number of stored weights (trainable slots)."""
        return int(self.indices.numel())

    @property
    def density(self):
        """nnz / dense size of the weight."""
        size = math.prod(self.weight_shape)
        return self.nnz / size if size else 0.0

    @property
    def sparsity(self):
        """1 - density."""
        return 1.0 - self.density

    def _cols(self):
        return math.prod(self.weight_shape[1:])

    def flat_positions(self):
        """(nnz,) int64 positions of the stored values in the flattened dense weight."""
        rows = torch.repeat_interleave(torch.arange(self.weight_shape[0]),
                                       self.indptr.diff())
        return rows * self._cols() + self.indices.to(torch.int64)

    def mask(self):
        """The structure as a dense boolean tensor of ``weight_shape``."""
        m = torch.zeros(math.prod(self.weight_shape), dtype=torch.bool)
        m[self.flat_positions()] = True
        return m.reshape(self.weight_shape)

    def dense_weight(self):
        """The dense weight (differentiable with respect to ``values``)."""
        flat = self.values.new_zeros(math.prod(self.weight_shape))
        flat = flat.scatter(0, self.flat_positions(), self.values)
        return flat.reshape(self.weight_shape)

    @property
    def _threads(self):
        return _ops.check_n_threads(self.n_threads)

    def _autocast_input(self, x):
        """(x, dtype): the input as the kernels take it, and the dtype to cast the
        output to (None: keep the kernels').

        Under ``torch.autocast("cpu", dtype=...)`` a float32 layer does what its
        dense twin does - the input is cast to the autocast dtype and so is the
        output - while ``values`` and ``bias`` stay float32 (dense layers cast
        them too: the sparse kernels keep float32 weights, which is at least as
        accurate), and autograd casts the gradients back to each leaf's dtype.
        bfloat16 runs the bfloat16 kernels (linear and conv2d).  float16 has
        no kernels: the float16 input
        is widened to float32, the float32 kernels run, the output is rounded
        to float16.  float64 layers and inputs are left alone, as autocast
        leaves float64 ops alone.
        """
        if (isinstance(x, torch.Tensor) and self.values.dtype == torch.float32
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
                and torch.is_autocast_enabled("cpu")):
            dt = torch.get_autocast_dtype("cpu")
            if dt == torch.bfloat16:
                return x.to(dt), None
            if dt == torch.float16:
                return x.to(dt).float(), dt
        return x, None

    def _check_input(self, x):
        # a bfloat16 input to a float32 layer runs the bfloat16 kernels
        low = (isinstance(x, torch.Tensor) and x.dtype == torch.bfloat16
               and self.values.dtype == torch.float32)
        _ops.check_tensor(x, "input", torch.bfloat16 if low else None)
        if self.values.device.type != "cpu":
            raise ValueError(f"{type(self).__name__} weights are on {self.values.device}; "
                             "sparseprop runs on the CPU only")
        if not low and x.dtype != self.values.dtype:
            raise TypeError(
                f"input has dtype {x.dtype} but {type(self).__name__} has dtype "
                f"{self.values.dtype}; convert the input (x.to({self.values.dtype})) or "
                f"the layer (.to({x.dtype}))"
            )

    # ------------------------------------------------------------ state_dict
    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight_shape"] = torch.tensor(self.weight_shape, dtype=torch.int64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        shape_key, dense_key = prefix + "weight_shape", prefix + "weight"
        own = {prefix + k for k in ("values", "indptr", "indices")}
        # a checkpoint is untrusted input: every entry this layer reads must be a
        # tensor of a sensible kind before anything looks inside it
        for key, kinds in ((dense_key, "floating"), (prefix + "values", "floating"),
                           (prefix + "indptr", "integer"), (prefix + "indices", "integer"),
                           (shape_key, "integer")):
            problem = _entry_problem(state_dict.get(key, None), kinds) if key in state_dict \
                else None
            if problem is not None:
                error_msgs.append(f"invalid entry {key}: {problem}")
                return
        if dense_key in state_dict and not any(k in state_dict for k in own):
            # A dense module's state: take its nonzeros as the new structure.
            w = state_dict[dense_key]
            if tuple(w.shape) != self.weight_shape:
                error_msgs.append(f"size mismatch for {dense_key}: copying a weight of shape "
                                  f"{tuple(w.shape)}, the layer has {self.weight_shape}")
                return
            with torch.no_grad():
                self._set_structure_from_dense(w.detach().to("cpu"), w != 0)
            rest = {k: v for k, v in state_dict.items() if k != dense_key}
            own_missing = []
            super()._load_from_state_dict(rest, prefix, local_metadata, strict, own_missing,
                                          unexpected_keys, error_msgs)
            missing_keys.extend(k for k in own_missing if k not in own)
            return
        if shape_key in state_dict:
            ws = state_dict[shape_key]
            if ws.dim() != 1 or ws.numel() != len(self.weight_shape):
                error_msgs.append(f"invalid entry {shape_key}: expected a 1-D integer tensor of "
                                  f"{len(self.weight_shape)} sizes (the layer's weight has shape "
                                  f"{self.weight_shape}); got shape {tuple(ws.shape)}")
                return
            shape = tuple(int(s) for s in ws.tolist())
            if shape != self.weight_shape:
                error_msgs.append(f"size mismatch for {shape_key}: the checkpoint's weight has "
                                  f"shape {shape}, the layer has {self.weight_shape}")
                return
        elif strict:
            missing_keys.append(shape_key)
        ptr_key, idx_key, val_key = prefix + "indptr", prefix + "indices", prefix + "values"
        if any(k in state_dict for k in (ptr_key, idx_key, val_key)):
            # what the checkpoint lacks (strict=False) is the layer's own: the
            # combination must be a valid structure either way
            ptr = state_dict.get(ptr_key, self.indptr)
            idx = state_dict.get(idx_key, self.indices)
            val = state_dict.get(val_key, self.values)
            problem = self._structure_problem(ptr, idx, val)
            if problem is not None:
                error_msgs.append(f"invalid sparse structure in {prefix!r}: {problem}")
                return
            if idx.numel() != self.nnz:
                # A different number of nonzeros: resize in place, keeping the
                # Parameter object (optimizers refer to it), then copy below.
                with torch.no_grad():
                    _swap_values_(self.values, self.values.new_empty(val.shape))
                    self.indices = self.indices.new_empty(idx.shape)
        rest = {k: v for k, v in state_dict.items() if k != shape_key}
        super()._load_from_state_dict(rest, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _structure_problem(self, ptr, idx, val):
        """None if (indptr, indices, values) is a valid structure of this layer, else why."""
        import sparseprop
        if ptr.dtype not in (torch.int32, torch.int64) or idx.dtype not in (torch.int32,
                                                                            torch.int64):
            return f"indptr/indices must be integer tensors; got {ptr.dtype}/{idx.dtype}"
        if val.dim() != 1 or val.shape != idx.shape:
            return (f"values must be 1-D with as many entries as indices; got "
                    f"{tuple(val.shape)} and {tuple(idx.shape)}")
        try:
            sparseprop.CSRMatrix(np.zeros(idx.numel(), np.float32), idx.cpu().numpy(),
                                 ptr.cpu().numpy(), (self.weight_shape[0], self._cols()))
        except (ValueError, TypeError) as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------ changing the mask
    def _set_structure_from_dense(self, weight, mask):
        """Replace structure and values (used by loading); keeps the Parameter object."""
        tmp = nn.Module()
        _SparseLayer._init_structure(tmp, weight, mask, dtype=self.values.dtype)
        _swap_values_(self.values, tmp.values.data.to(self.values.device))
        self.indptr = tmp.indptr
        self.indices = tmp.indices

    @torch.no_grad()
    def _restructure(self, new_positions, optimizer=None):
        """Make the sorted flat positions ``new_positions`` the structure.

        Values (and optimizer state) of kept positions are kept, new ones
        start at zero.  Returns ``source``: for each new slot, the index of
        its old slot or -1.
        """
        old = self.flat_positions()
        new_positions = new_positions.to(torch.int64)
        loc = torch.searchsorted(old, new_positions)
        loc_c = loc.clamp(max=max(old.numel() - 1, 0))
        found = (loc < old.numel()) & (old[loc_c] == new_positions) if old.numel() else \
            torch.zeros_like(new_positions, dtype=torch.bool)
        source = torch.where(found, loc_c, torch.full_like(loc, -1))
        old_nnz = self.nnz
        values = self.values.new_zeros(new_positions.numel())
        values[found] = self.values.detach()[source[found]]
        cols = self._cols()
        rows = torch.div(new_positions, cols, rounding_mode="floor") if cols else new_positions
        counts = torch.bincount(rows, minlength=self.weight_shape[0]) if rows.numel() else \
            torch.zeros(self.weight_shape[0], dtype=torch.int64)
        indptr = torch.zeros(self.weight_shape[0] + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=indptr[1:])
        _swap_values_(self.values, values)
        self.indptr = indptr
        self.indices = (new_positions - rows * cols).to(torch.int32)
        if optimizer is not None:
            remap_optimizer_state(optimizer, self.values, source, old_nnz)
        return source

    def set_mask_(self, mask, *, optimizer=None):
        """Make the boolean ``mask`` (of ``weight_shape``) the new structure, in place.

        Entries kept from the old structure keep their values (and optimizer
        state, if ``optimizer`` is given); entries new to the structure start
        at zero.  Returns the (nnz,) int64 map from new slots to old slots
        (-1 for new ones).  See :func:`remap_optimizer_state` for what happens
        to optimizer state when ``optimizer`` is not given.
        """
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != self.weight_shape:
            raise ValueError(f"mask must have shape {self.weight_shape} (the weight's); "
                             f"got {tuple(mask.shape)}")
        return self._restructure(mask.reshape(-1).bool().nonzero().reshape(-1), optimizer)

    def prune_(self, sparsity, *, optimizer=None):
        """Magnitude pruning within the current nonzeros, in place.

        Keeps the ``round((1 - sparsity) * dense_size)`` stored values of
        largest magnitude (ties go to the earlier position); does nothing if
        the layer already has that many or fewer.  Returns the map from new
        slots to old slots.
        """
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1]; got {sparsity}")
        keep = int(round((1.0 - float(sparsity)) * math.prod(self.weight_shape)))
        return self.keep_largest_(keep, optimizer=optimizer)

    def keep_largest_(self, k, *, optimizer=None):
        """Keep the ``k`` stored values of largest magnitude (see :meth:`prune_`)."""
        if k >= self.nnz:
            return torch.arange(self.nnz)
        order = torch.sort(self.values.detach().abs(), descending=True, stable=True).indices
        kept = torch.sort(order[:max(k, 0)]).values
        return self._restructure(self.flat_positions()[kept], optimizer)

    def regrow_(self, n, dense_grad, *, optimizer=None):
        """Grow ``n`` new connections where ``|dense_grad|`` is largest (RigL), in place.

        ``dense_grad`` (of ``weight_shape``) is the gradient of the loss with
        respect to the *dense* weight; a sparse layer computes it only at its
        nonzeros, so get it with :class:`DenseGradients` on one batch.  Only
        positions outside the current structure are candidates; new values
        (and their optimizer state) start at zero.  Returns the map from new
        slots to old slots.
        """
        g = torch.as_tensor(dense_grad).detach()
        if tuple(g.shape) != self.weight_shape:
            raise ValueError(f"dense_grad must have shape {self.weight_shape}; "
                             f"got {tuple(g.shape)}")
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be non-negative; got {n}")
        score = g.reshape(-1).abs().to(torch.float64)
        old = self.flat_positions()
        score[old] = -1.0  # never a candidate
        n = min(n, score.numel() - old.numel())
        if n == 0:
            return torch.arange(self.nnz)
        grow = torch.sort(score, descending=True, stable=True).indices[:n]
        new_positions = torch.sort(torch.cat([old, grow])).values
        return self._restructure(new_positions, optimizer)

    def extra_repr(self):
        return (f"{self._shape_repr()}, nnz={self.nnz} "
                f"({100 * self.sparsity:.1f}% sparse)")


# ---------------------------------------------------------------- linear

class SparseLinear(_SparseLayer):
    """A linear layer ``y = x W^T + b`` with an unstructured sparse ``W``.

    Drop-in for ``nn.Linear`` on float32 (or float64) CPU tensors: forward and
    backward run the SparseProp kernels, whose cost grows with the number of
    nonzeros.  Build one from a (pruned) ``nn.Linear`` with :meth:`from_dense`.

    Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a float32 layer
    returns bfloat16, like ``nn.Linear``, from bfloat16 kernels (bfloat16
    activations, float32 weights and sums); a bfloat16 input outside autocast
    runs them too.  Under float16 autocast the input is rounded to float16,
    widened, run through the float32 kernels and the output rounded to
    float16 (no float16 kernels).  ``values`` and ``bias`` stay float32.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    sparsity : float, default 0.0
        Fraction of weights left out at random; the kept ones are initialised
        like ``nn.Linear`` (Kaiming uniform).
    n_threads : int, optional
        Threads of the kernels; None follows ``torch.get_num_threads()`` at
        call time.
    dtype : torch.float32 (default) or torch.float64
    generator : torch.Generator, optional
        For the random structure and initial values.

    Attributes
    ----------
    values : nn.Parameter, shape (nnz,)
        The stored weights, row-major order (``dense[dense != 0]``).
    indptr : buffer, int64, shape (out_features + 1,)
    indices : buffer, int32, shape (nnz,)
        CSR structure of the (out_features, in_features) weight.
    bias : nn.Parameter or None
    """

    def __init__(self, in_features, out_features, bias=True, *, sparsity=0.0, n_threads=None,
                 dtype=None, generator=None):
        super().__init__()
        dtype = torch.float32 if dtype is None else dtype
        _ops.check_tensor(torch.empty(0, dtype=dtype), "dtype")
        _ops.check_n_threads(n_threads)
        _check_weight_size(int(out_features), int(in_features), "out_features", "in_features")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight_shape = (self.out_features, self.in_features)
        self._built = (self.in_features, self.out_features, self.weight_shape)
        self.n_threads = n_threads
        dense = nn.Linear(self.in_features, self.out_features, bias=bias, dtype=dtype)
        if generator is not None:
            with torch.no_grad():
                bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
                dense.weight.uniform_(-bound, bound, generator=generator)
                if bias:
                    dense.bias.uniform_(-bound, bound, generator=generator)
        mask = torch.rand(self.weight_shape, generator=generator) >= float(sparsity)
        self._init_structure(dense.weight, mask)
        self.bias = nn.Parameter(dense.bias.detach().clone()) if bias else None

    @classmethod
    def from_dense(cls, module, *, n_threads=None):
        """A SparseLinear holding the nonzeros of ``module``'s (masked) weight.

        ``module`` is an ``nn.Linear`` whose weight is zero-masked, or pruned
        with ``torch.nn.utils.prune``, or prepared by a ``torch.ao.pruning``
        sparsifier (see :func:`dense_weight_of`).  Values and bias are copied.
        """
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module must be an nn.Linear; got {type(module).__name__}")
        _ops.check_n_threads(n_threads)
        weight, mask = dense_weight_of(module)
        _ops.check_tensor(weight, "module.weight")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.in_features, self.out_features = module.in_features, module.out_features
        self.weight_shape = (self.out_features, self.in_features)
        self._built = (self.in_features, self.out_features, self.weight_shape)
        self.n_threads = n_threads
        self._init_structure(weight, mask)
        self.bias = (nn.Parameter(module.bias.detach().clone()) if module.bias is not None
                     else None)
        return self

    def to_dense(self):
        """An equivalent ``nn.Linear`` (zeros where nothing is stored)."""
        m = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                      dtype=self.values.dtype)
        with torch.no_grad():
            m.weight.copy_(self.dense_weight())
            if self.bias is not None:
                m.bias.copy_(self.bias)
        return m

    def _check_attributes(self):
        """The structural attributes are the weight's: reassigning one would make
        the kernels read the buffers with another shape (silently wrong)."""
        now = (self.in_features, self.out_features, self.weight_shape)
        built = getattr(self, "_built", now)
        if now != built:
            raise ValueError(
                f"SparseLinear (in_features, out_features, weight_shape) were set to {now} "
                f"after construction; the weight is {built}: build a new layer "
                "(SparseLinear.from_dense) instead of reassigning them")

    def forward(self, x):
        self._check_attributes()
        x, cast_back = self._autocast_input(x)
        self._check_input(x)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"input has shape {tuple(x.shape)}; SparseLinear expects "
                             f"(..., {self.in_features}) (last axis = in_features)")
        args = (x, self.values, self.indptr, self.indices, self.in_features, self.bias,
                self._threads)
        if _ops.eager_path_ok(x, self.values, self.indptr, self.indices, self.bias):
            if not _ops.grad_wanted(x, self.values, self.bias):  # no_grad, inference_mode
                y = _ops._linear_impl(*args)
            else:
                y = _ops.EagerLinear.apply(*args)
        else:
            y = torch.ops.sparseprop.linear(*args)
        return y if cast_back is None else y.to(cast_back)

    def _shape_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}")


# ---------------------------------------------------------------- conv2d

_ALGORITHMS = ("auto", "batch_last", "over_width")


class SparseConv2d(_SparseLayer):
    """A 2-D convolution with an unstructured sparse weight (like ``nn.Conv2d``).

    Every ``nn.Conv2d`` option is supported: stride, padding (ints, pairs,
    ``"same"``, ``"valid"``; ``padding_mode`` other than ``"zeros"`` and the
    odd halves of ``"same"`` are applied with ``F.pad`` first, as ``nn.Conv2d``
    does), dilation, groups and rectangular kernels.  Inputs may be
    non-contiguous or channels_last; the output is contiguous NCHW.

    Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a float32 layer
    returns bfloat16, like ``nn.Conv2d``, from bfloat16 kernels (bfloat16
    activations, float32 weights and sums); a bfloat16 input outside autocast
    runs them too.  Under float16 autocast the input is rounded to float16,
    widened, run through the float32 kernels and the output rounded to
    float16 (no float16 kernels).  ``values`` and ``bias`` stay float32.

    Parameters
    ----------
    in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
    padding_mode
        As for ``nn.Conv2d``.
    sparsity : float, default 0.0
        Fraction of weights left out at random.
    algorithm : {"auto", "batch_last", "over_width"}
        The sparseprop conv kernel (``sparsify`` picks one per layer by timing).
    n_threads : int, optional
        None follows ``torch.get_num_threads()``.
    dtype : torch.float32 (default) or torch.float64
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", *, sparsity=0.0,
                 algorithm="auto", n_threads=None, dtype=None, generator=None):
        super().__init__()
        dtype = torch.float32 if dtype is None else dtype
        _ops.check_tensor(torch.empty(0, dtype=dtype), "dtype")
        _ops.check_n_threads(n_threads)
        if isinstance(groups, int) and groups > 0:
            kh, kw = nn.modules.utils._pair(kernel_size)
            _check_weight_size(int(out_channels), int(in_channels) // groups * kh * kw,
                               "out_channels",
                               "in_channels // groups * kernel_h * kernel_w")
        dense = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation,
                          groups, bias, padding_mode, dtype=dtype)
        self._copy_hyper(dense, algorithm, n_threads)
        if generator is not None:
            with torch.no_grad():
                fan_in = math.prod(self.weight_shape[1:])
                bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
                dense.weight.uniform_(-bound, bound, generator=generator)
                if bias:
                    dense.bias.uniform_(-bound, bound, generator=generator)
        mask = torch.rand(self.weight_shape, generator=generator) >= float(sparsity)
        self._init_structure(dense.weight, mask)
        self.bias = nn.Parameter(dense.bias.detach().clone()) if bias else None

    def _copy_hyper(self, conv, algorithm, n_threads):
        if algorithm not in _ALGORITHMS:
            raise ValueError(f"algorithm must be one of {_ALGORITHMS}; got {algorithm!r}")
        _ops.check_n_threads(n_threads)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride = tuple(conv.stride)
        self.padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        self.dilation = tuple(conv.dilation)
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.algorithm = algorithm
        self.n_threads = n_threads
        self.weight_shape = (conv.out_channels, conv.in_channels // conv.groups,
                             *self.kernel_size)
        # (left, right, top, bottom) like nn.Conv2d._reversed_padding_repeated_twice
        self._pads = tuple(int(p) for p in conv._reversed_padding_repeated_twice)
        pw_l, pw_r, ph_t, ph_b = self._pads
        if self.padding_mode == "zeros" and pw_l == pw_r and ph_t == ph_b:
            self._pre_pad = None
            self._kernel_padding = [ph_t, pw_l]
        elif self.padding_mode == "zeros":
            # "same" with an odd total: pad the extra row/column first (like torch)
            self._pre_pad = ((0, pw_r - pw_l, 0, ph_b - ph_t), "constant")
            self._kernel_padding = [ph_t, pw_l]
        else:
            self._pre_pad = (self._pads, self.padding_mode)
            self._kernel_padding = [0, 0]
        self._hyper = self._hyper_now()

    _STRUCTURAL = ("in_channels", "out_channels", "kernel_size", "groups", "weight_shape")
    _GEOMETRY = ("stride", "padding", "dilation", "padding_mode")

    def _hyper_now(self):
        return tuple(getattr(self, a) for a in self._STRUCTURAL + self._GEOMETRY)

    def _check_attributes(self):
        """Attributes reassigned after construction: the geometry (stride,
        padding, dilation, padding_mode) is validated and takes effect, as on
        ``nn.Conv2d``; the structure (channels, kernel size, groups) is the
        weight's and cannot change."""
        now = self._hyper_now()
        built = getattr(self, "_hyper", None)
        if now == built:
            return
        if built is not None:
            n = len(self._STRUCTURAL)
            for name, was, got in zip(self._STRUCTURAL, built[:n], now[:n], strict=True):
                if was != got:
                    raise ValueError(
                        f"SparseConv2d.{name} was set to {got!r} after construction; the "
                        f"weight has {name}={was!r} (shape {built[n - 1]}): build a new layer "
                        "(SparseConv2d.from_dense) instead of reassigning it")
        # a meta nn.Conv2d validates the new geometry and derives the padding
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, self.dilation, self.groups, False, self.padding_mode,
                         device="meta")
        self._copy_hyper(conv, self.algorithm, self.n_threads)

    @classmethod
    def from_dense(cls, module, *, algorithm="auto", n_threads=None):
        """A SparseConv2d holding the nonzeros of ``module``'s (masked) weight.

        ``module`` is an ``nn.Conv2d`` (zero-masked, pruned with
        ``torch.nn.utils.prune`` or prepared by a ``torch.ao.pruning``
        sparsifier); all its options are kept.
        """
        if not isinstance(module, nn.Conv2d):
            raise TypeError(f"module must be an nn.Conv2d; got {type(module).__name__}")
        weight, mask = dense_weight_of(module)
        _ops.check_tensor(weight, "module.weight")
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self._copy_hyper(module, algorithm, n_threads)
        self._init_structure(weight, mask)
        self.bias = (nn.Parameter(module.bias.detach().clone()) if module.bias is not None
                     else None)
        return self

    def to_dense(self):
        """An equivalent ``nn.Conv2d`` (same options, zeros where nothing is stored)."""
        m = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                      self.padding, self.dilation, self.groups, self.bias is not None,
                      self.padding_mode, dtype=self.values.dtype)
        with torch.no_grad():
            m.weight.copy_(self.dense_weight())
            if self.bias is not None:
                m.bias.copy_(self.bias)
        return m

    def _prepare_input(self, x):
        """(x, kernel_padding): the input after any explicit padding."""
        if self._pre_pad is not None:
            pads, mode = self._pre_pad
            x = F.pad(x, pads, mode=mode)
        return x, self._kernel_padding

    def forward(self, x):
        self._check_attributes()
        x, cast_back = self._autocast_input(x)
        self._check_input(x)
        unbatched = x.dim() == 3
        if unbatched:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input has shape {tuple(x.shape)}; SparseConv2d expects "
                             f"(N, {self.in_channels}, H, W) or ({self.in_channels}, H, W)")
        x, padding = self._prepare_input(x)
        args = (x, self.values, self.indptr, self.indices, list(self.weight_shape), self.bias,
                list(self.stride), padding, list(self.dilation), self.groups, self.algorithm,
                self._threads)
        if _ops.eager_path_ok(x, self.values, self.indptr, self.indices, self.bias):
            if not _ops.grad_wanted(x, self.values, self.bias):  # no_grad, inference_mode
                y = _ops._conv2d_impl(*args)
            else:
                y = _ops.EagerConv2d.apply(*args)
        else:
            y = torch.ops.sparseprop.conv2d(*args)
        if cast_back is not None:
            y = y.to(cast_back)
        return y.squeeze(0) if unbatched else y

    def _shape_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        if self.algorithm != "auto":
            s += f", algorithm={self.algorithm!r}"
        return s


def weight_sparsity(model, kinds=(nn.Conv2d,)):
    """Fraction of zero weights over a model's layers of the given kinds.

    ``kinds`` holds dense module classes (``nn.Conv2d``, ``nn.Linear``); a
    :class:`SparseConv2d` counts as a Conv2d and a :class:`SparseLinear` as a
    Linear.  Dense layers count the entries their mask drops (see
    :func:`dense_weight_of`: pruned modules and sparsifiers included), sparse
    layers their structural zeros (stored zeros are trainable slots, not
    zeros).  Returns 0.0 for a model without such layers.
    """
    sparse_kinds = tuple(s for d, s in ((nn.Conv2d, SparseConv2d), (nn.Linear, SparseLinear))
                         if any(issubclass(d, k) for k in kinds))
    zeros = total = 0
    for m in model.modules():
        if isinstance(m, sparse_kinds):
            size = math.prod(m.weight_shape)
            zeros, total = zeros + size - m.nnz, total + size
        elif isinstance(m, tuple(kinds)):
            _, mask = dense_weight_of(m)
            zeros, total = zeros + int((~mask).sum()), total + mask.numel()
    return zeros / total if total else 0.0
