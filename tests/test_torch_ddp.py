"""A sparsified model trains under DistributedDataParallel (gloo, 2 processes on
127.0.0.1) exactly like one process on the same global batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import ddp_worker  # noqa: E402  (tests/ is on sys.path, see conftest.py)

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 180


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_ddp_gloo_two_processes_match_single_process(kind, tmp_path):
    out = tmp_path / "rank0.pt"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_worker.py"), str(rank), "2",
                               port, kind, str(out)],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for rank in range(2)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for rank, (p, log) in enumerate(zip(procs, logs, strict=True)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log[-3000:]}"

    reference = ddp_worker.build(kind)
    x, y = ddp_worker.data(kind)
    # one thread, like the workers: with two, the kernels sum dW partials in
    # another order, and after several steps that rounding once exceeded the
    # tolerance below
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ddp_worker.train(reference, x, y)
    finally:
        torch.set_num_threads(threads)
    trained = torch.load(out, weights_only=True)
    ref_state = reference.state_dict()
    assert trained.keys() == ref_state.keys()
    initial = ddp_worker.build(kind).state_dict()
    for key, value in ref_state.items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(trained[key], value, rtol=1e-5, atol=1e-6, msg=key)
            assert not torch.equal(value, initial[key]), f"{key} did not train"
        else:
            assert torch.equal(trained[key], value), key
