"""Quick start of the NumPy API: train a sparse linear layer and time it against dense.

What it shows
    * building a CSRMatrix from a pruned dense weight;
    * forward / backward from NumPy (dW only at the nonzeros, aligned with W.data);
    * a plain SGD loop that updates W.data in place;
    * the time of one forward+backward step, sparse vs dense, at the paper's layer
      size (3072x768, batch 902) and 90% sparsity, on the default thread count.
How long
    About 20 seconds on 2 cores.

Run:  python examples/quickstart_numpy.py [--sparsity 0.9] [--threads N]
"""
import argparse
import time

import numpy as np

import sparseprop as sp


def median_ms(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=None, help="default: OpenMP's default")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    n_in, n_out, batch = 768, 3072, 902

    # 1. A sparse "teacher" layer and data it generates.
    teacher = rng.standard_normal((n_out, n_in)).astype(np.float32) / n_in**0.5
    mask = rng.random((n_out, n_in)) >= args.sparsity
    teacher *= mask
    X = rng.standard_normal((batch, n_in)).astype(np.float32)
    target = X @ teacher.T

    # 2. A student with the same mask, random values: learn them with SGD.
    W = sp.CSRMatrix.from_dense(mask * rng.standard_normal((n_out, n_in)).astype(np.float32)
                                / n_in**0.5)
    print(f"weight {W.shape}, {W.nnz} nonzeros ({100 * W.sparsity:.1f}% sparse)")
    lr = 0.5
    for step in range(31):
        Y = sp.linear_forward(X, W, n_threads=args.threads)
        err = Y - target
        loss = 0.5 * float(np.mean(np.sum(err * err, axis=1)))
        _, dW = sp.linear_backward(X, W, err / batch, need_input_grad=False,
                                   n_threads=args.threads)
        W.data[:] -= lr * dW  # in-place SGD on the stored values
        if step % 10 == 0:
            print(f"  step {step:2d}  loss {loss:.5f}")

    # 3. Time one training step (forward + backward with dX) against dense.
    dY = rng.standard_normal((batch, n_out)).astype(np.float32)
    Wd = W.to_dense()

    def sparse_step():
        sp.linear_forward(X, W, n_threads=args.threads)
        sp.linear_backward(X, W, dY, n_threads=args.threads)

    def numpy_step():
        X @ Wd.T
        dY @ Wd
        dY.T @ X

    t_sparse = median_ms(sparse_step)
    print(f"\nforward+backward, batch {batch}, threads "
          f"{args.threads or sp.config()['default_threads']}, ISA {sp.config()['isa']}:")
    print(f"  sparseprop        {t_sparse:8.2f} ms")
    t_np = median_ms(numpy_step)
    print(f"  dense NumPy       {t_np:8.2f} ms   -> sparse is {t_np / t_sparse:.1f}x faster")
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    Xt = torch.from_numpy(X).requires_grad_(True)
    Wt = torch.from_numpy(Wd).requires_grad_(True)
    dYt = torch.from_numpy(dY)

    def torch_step():
        Y = F.linear(Xt, Wt)
        torch.autograd.grad(Y, (Xt, Wt), dYt)

    t_torch = median_ms(torch_step)
    print(f"  dense PyTorch     {t_torch:8.2f} ms   -> sparse is {t_torch / t_sparse:.1f}x faster")


if __name__ == "__main__":
    main()
