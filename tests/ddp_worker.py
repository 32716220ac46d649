"""One process of the DistributedDataParallel test (tests/test_torch_ddp.py).

Run as ``python ddp_worker.py RANK WORLD PORT KIND OUT``; also imported by the
test for the shared model, data and training loop.
"""
import sys
from datetime import timedelta

import torch
import torch.nn.functional as F
from torch import nn

import sparseprop.torch as spt

STEPS = 3
GLOBAL_BATCH = 16


def build(kind):
    """The sparsified model, the same in every process (fixed seeds)."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(24, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                              nn.Linear(32, 5))
    else:
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                              nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight[torch.rand(m.weight.shape, generator=gen) < 0.85] = 0
    model, report = spt.sparsify(model, min_sparsity=0.8, autotune=False)
    assert report.converted, report
    return model


def data(kind):
    gen = torch.Generator().manual_seed(2)
    shape = (GLOBAL_BATCH, 24) if kind == "mlp" else (GLOBAL_BATCH, 3, 8, 8)
    return torch.randn(shape, generator=gen), torch.randint(0, 5, (GLOBAL_BATCH,), generator=gen)


def train(model, x, y):
    """STEPS of SGD with momentum; returns the losses (of this process's batch)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def main(rank, world, port, kind, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    try:
        model = DDP(build(kind))
        x, y = data(kind)
        per = GLOBAL_BATCH // world
        train(model, x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per])
        if rank == 0:
            torch.save(model.module.state_dict(), out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import os

    r, w, p, k, o = sys.argv[1:6]
    main(int(r), int(w), int(p), k, o)
    # Leave without the interpreter's teardown: once in a full-suite CI run,
    # rank 0 aborted there after its work was done ("terminate called without
    # an active exception": a gloo thread still joinable at exit, a torch
    # teardown issue). Errors before this point still exit non-zero.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
