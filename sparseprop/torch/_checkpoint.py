"""Sparse checkpoints in safetensors files (and Hugging Face model folders).

A sparse layer's state_dict entries - ``values`` (float), ``indptr``
(int64), ``indices`` (int32), ``weight_shape`` (int64) - are plain dense
tensors, so ``safetensors.torch.save_file(model.state_dict(), path)`` stores
them as they are: a file of about ``(4 + 4) * nnz`` bytes per float32 weight
instead of ``4 * size``.  ``save_pretrained`` of a Hugging Face model with
sparse layers writes the same entries.

Loading needs the layer types to match the file (a dense architecture has
``weight`` where the file has ``values``/``indices``); :func:`load_safetensors`
reads a file, or a model folder (single ``model.safetensors`` or sharded with
``model.safetensors.index.json``), and hands the tensors to
:func:`sparseprop.torch.load_state_dict`, which makes the types match.
``from_pretrained`` alone does not: it reports the sparse entries as
unexpected and initializes the dense weights at random.
"""
import json
import os
from pathlib import Path

__all__ = ["load_safetensors"]

_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


def _safetensors_load_file():
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading .safetensors files needs safetensors: pip install "
                          "safetensors (or pip install 'sparseprop[deploy]')") from exc
    return load_file


def _files(path):
    path = Path(os.fspath(path))
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / _INDEX).is_file():
            index = json.loads((path / _INDEX).read_text())
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict):
                raise ValueError(f"{path / _INDEX} has no 'weight_map' object")
            names = sorted(set(weight_map.values()), key=str)
            for name in names:  # an untrusted index names files beside it, nothing else
                if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                    raise ValueError(f"{path / _INDEX}: weight_map names shard {name!r}; "
                                     "expected a file name in the same folder")
            return [path / name for name in names]
        if (path / _SINGLE).is_file():
            return [path / _SINGLE]
        raise FileNotFoundError(f"path is a folder without {_SINGLE} or {_INDEX}: {path}")
    raise FileNotFoundError(f"path must be a .safetensors file or a model folder; "
                            f"{path} does not exist")


def load_safetensors(model, path, strict=True):
    """Load a safetensors checkpoint (sparse or dense entries) into ``model``.

    Parameters
    ----------
    model : nn.Module
        Any architecture whose layers match the checkpoint's names; dense
        ``nn.Linear``/``nn.Conv2d`` whose entries are sparse become
        :class:`SparseLinear`/:class:`SparseConv2d` (and the reverse), as
        :func:`sparseprop.torch.load_state_dict` does.  Modified in place.
    path : str or path-like
        A ``.safetensors`` file, or a folder holding ``model.safetensors`` or
        a sharded checkpoint (``model.safetensors.index.json`` and its
        shards), as ``save_pretrained`` writes them.
    strict : bool, default True
        As for ``load_state_dict``.

    Returns
    -------
    NamedTuple
        ``missing_keys`` and ``unexpected_keys``, as ``load_state_dict`` returns.

    Examples
    --------
    A Hugging Face model with sparse layers (``sparse.save_pretrained(folder)``)
    comes back with its config and this function::

        model = BertForSequenceClassification(BertConfig.from_pretrained(folder))
        load_safetensors(model, folder)
    """
    from sparseprop.torch._convert import load_state_dict

    load_file = _safetensors_load_file()
    state = {}
    for f in _files(path):
        state.update(load_file(os.fspath(f)))
    return load_state_dict(model, state, strict=strict)
