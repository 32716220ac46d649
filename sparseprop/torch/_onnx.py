"""ONNX export of models with sparse layers.

torch 2.13's ``torch.onnx.export`` is the dynamo-based exporter (it needs
``onnxscript``): it runs ``torch.export`` and translates every node of the
graph into ONNX.  ``torch.ops.sparseprop.linear`` / ``conv2d`` are not ONNX
operators, so they are translated through the exporter's
``custom_translation_table`` into standard ones:

* ``dense_weights=True`` (the default of :func:`onnx_export`): the model is
  densified first (:func:`sparseprop.torch.densify`, on a copy), so each
  sparse layer exports as ``Gemm``/``MatMul`` or ``Conv`` with its dense
  weight as an initializer - what every ONNX runtime expects.
* ``dense_weights=False``: the file keeps the sparse weight (values and
  indices as initializers, about ``density`` of the dense size) and the graph
  rebuilds the dense weight from them (``ScatterElements``, ``CumSum``: O(nnz
  + rows)) in front of the same ``Gemm``/``Conv``.  onnxruntime folds that
  sub-graph into a constant when the session is created.

Either way the runtime computes *dense*: ONNX runtimes have no unstructured
sparse kernels for these ops, so a deployed ONNX model gets sparseprop's
smaller file (with ``dense_weights=False``), not its speed.
:func:`onnx_translation_table` is the table for users who call
``torch.onnx.export`` themselves.
"""
import torch

__all__ = ["onnx_export", "onnx_translation_table"]


def _onnxscript():
    try:
        import onnxscript
        from onnxscript import opset18
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "exporting to ONNX needs onnxscript (torch.onnx's exporter uses it): "
            "pip install onnx onnxscript (or pip install 'sparseprop[deploy]')"
        ) from exc
    return onnxscript, opset18


def _dense_weight(op, values, indptr, indices, rows, cols, shape):
    """The dense weight of ``shape`` from the CSR buffers, as ONNX ops.

    Row of each stored value: a 1 at every row start (``indptr[1:rows]``,
    accumulated - empty rows put several at one place), summed by CumSum.
    """
    import numpy as np

    nnz = op.Shape(indices)                                  # (1,) int64
    ints = np.int64
    starts = op.Slice(indptr, op.Constant(value_ints=[1]), op.Constant(value_ints=[rows]))
    marks = op.ScatterElements(
        op.ConstantOfShape(op.Add(nnz, op.Constant(value_ints=[1])),
                           value=_ir_tensor(np.zeros(1, ints))),
        starts, op.Expand(op.Constant(value_ints=[1]), op.Shape(starts)), reduction="add")
    row_of = op.Slice(op.CumSum(marks, op.Constant(value_int=0)),
                      op.Constant(value_ints=[0]), nnz)
    flat = op.Add(op.Mul(row_of, op.Constant(value_ints=[cols])), op.Cast(indices, to=7))
    zeros = op.ConstantOfShape(op.Constant(value_ints=[rows * cols]),
                               value=_ir_tensor(np.zeros(1, _np_dtype(values))))
    dense = op.ScatterElements(op.CastLike(zeros, values), flat, values)
    return op.Reshape(dense, op.Constant(value_ints=list(shape)))


def _np_dtype(value):
    import numpy as np

    dtype = getattr(value, "dtype", None)
    name = str(dtype).lower() if dtype is not None else ""
    return np.float64 if "double" in name or "float64" in name else np.float32


def _ir_tensor(array):
    import onnx_ir as ir

    return ir.tensor(array)


def onnx_translation_table():
    """The ``custom_translation_table`` that exports sparseprop's ops as standard ONNX.

    Use it with torch's own exporter (``torch.onnx.export(..., dynamo=True)``,
    the default in torch 2.13)::

        torch.onnx.export(model, (x,), "model.onnx",
                          custom_translation_table=onnx_translation_table())

    Each sparse layer becomes ``Gemm`` (or ``MatMul`` + ``Add`` for inputs
    that are not 2-D) or ``Conv`` whose weight is rebuilt from the stored
    values and indices by a small constant sub-graph (see the module doc);
    :func:`onnx_export` with ``dense_weights=True`` exports dense initializers
    instead.

    Returns
    -------
    dict
        ``{torch.ops.sparseprop.linear.default: fn, torch.ops.sparseprop.conv2d.default: fn}``.
    """
    _, op = _onnxscript()

    def linear(x, values, indptr, indices, in_features, bias=None, n_threads=0):
        rows = int(indptr.shape[0]) - 1
        w = _dense_weight(op, values, indptr, indices, rows, int(in_features),
                          (rows, int(in_features)))
        y = op.MatMul(x, op.Transpose(w, perm=[1, 0]))
        return y if bias is None else op.Add(y, bias)

    def conv2d(x, values, indptr, indices, weight_shape, bias, stride, padding, dilation,
               groups, algorithm, n_threads):
        oc, icg, kh, kw = (int(s) for s in weight_shape)
        w = _dense_weight(op, values, indptr, indices, oc, icg * kh * kw, (oc, icg, kh, kw))
        pads = [int(padding[0]), int(padding[1]), int(padding[0]), int(padding[1])]
        args = (x, w) if bias is None else (x, w, bias)
        return op.Conv(*args, strides=[int(s) for s in stride], pads=pads,
                       dilations=[int(d) for d in dilation], group=int(groups),
                       kernel_shape=[kh, kw])

    return {torch.ops.sparseprop.linear.default: linear,
            torch.ops.sparseprop.conv2d.default: conv2d}


def onnx_export(model, args, f=None, *, dense_weights=True, **kwargs):
    """``torch.onnx.export`` for a model with sparseprop layers.

    Parameters
    ----------
    model : nn.Module
        Not modified (``dense_weights=True`` exports a densified copy).
    args : tuple
        Example positional inputs, as for ``torch.onnx.export``.
    f : str or path-like, optional
        Where to write the ``.onnx`` file (None: only return the program).
    dense_weights : bool, default True
        True: the sparse layers become ordinary dense layers first, so the file
        holds dense weight initializers.  False: the file holds the sparse
        values and indices and a sub-graph that rebuilds the dense weight (a
        file about ``density`` times the weights' dense size; onnxruntime
        folds the sub-graph when it loads the model).  The runtime computes
        dense in both cases.
    **kwargs
        Passed to ``torch.onnx.export`` (``dynamic_shapes``, ``input_names``,
        ``opset_version`` ...).  ``dynamo=False`` (the TorchScript exporter)
        is not supported; a ``custom_translation_table`` is merged with
        sparseprop's.

    Returns
    -------
    torch.onnx.ONNXProgram
        What ``torch.onnx.export`` returns.
    """
    from sparseprop.torch._convert import densify

    if kwargs.get("dynamo", True) is not True:
        raise NotImplementedError(
            "dynamo must be True (torch 2.13's default exporter); got "
            f"{kwargs['dynamo']!r}: sparseprop's ops have no TorchScript-exporter symbolic")
    if not isinstance(dense_weights, bool):
        raise TypeError(f"dense_weights must be a bool; got {type(dense_weights).__name__}")
    table = dict(onnx_translation_table())
    table.update(kwargs.pop("custom_translation_table", None) or {})
    if dense_weights and isinstance(model, torch.nn.Module):
        model = densify(model)  # a copy: the caller's model keeps its sparse layers
    return torch.onnx.export(model, args, f, custom_translation_table=table, **kwargs)
