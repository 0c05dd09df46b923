"""bcvae.distributed: the identity in one process, and what two gloo processes exchange
(the whole multi-process training is compared with one process in test_ddp.py, slow)."""

from __future__ import annotations

import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

from bcvae import distributed


def test_one_process_is_the_identity():
    rows = torch.arange(12.0).reshape(6, 2)
    assert distributed.start() == (0, 1)
    assert distributed.gather_rows((rows,), 1)[0] is rows
    assert torch.equal(distributed.share(rows, 0, 1), rows)
    sums = {"rec": 3.0}
    assert distributed.mean_over_ranks(sums, torch.device("cpu"), 1) is sums
    assert distributed.agree_on_stop(None, torch.device("cpu"), 1) is None
    assert distributed.agree_on_stop(15, torch.device("cpu"), 1) == 15
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap(model, 1) is model
    assert distributed.local_cuda_device(1) is None


def test_share_slices_the_global_batch_by_rank():
    idx = np.arange(8)
    assert [distributed.share(idx, r, 2).tolist() for r in range(2)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def _worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.start() == (rank, world)
    try:
        cpu = torch.device("cpu")
        own = torch.full((2, 3), float(rank + 1), requires_grad=True)      # this process's (B/W, K) rows
        (everyone,) = distributed.gather_rows((own,), world)                # (B, K)
        (everyone * torch.arange(4.0)[:, None]).sum().backward()            # d/d(row i) = i
        disc = torch.nn.Linear(1, 1, bias=False)
        disc.weight.grad = torch.full((1, 1), float(rank))
        distributed.average_gradients(disc.parameters(), world)
        means = distributed.mean_over_ranks({"rec": torch.tensor(2.0 * rank), "kl_dim": torch.tensor([rank, 4.0])},
                                            cpu, world)
        queue.put((rank, everyone.detach().tolist(), own.grad.tolist(), disc.weight.grad.item(),
                   distributed.agree_on_stop(15 if rank == 1 else None, cpu, world),
                   distributed.agree_on_stop(None, cpu, world),
                   {k: v.tolist() for k, v in means.items()}))  # plain values: the process exits next
    finally:
        distributed.end()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_exchange_rows_gradients_flags_and_means():
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, _free_port(), queue), nprocs=2, join=True, start_method="spawn")
    results = dict((r[0], r[1:]) for r in (queue.get() for _ in range(2)))
    for rank, (everyone, grad, disc_grad, stop, no_stop, means) in results.items():
        assert everyone == [[1.0] * 3] * 2 + [[2.0] * 3] * 2    # every process sees the global batch
        # the one-process gradient of its own rows (i for row i), times W for DDP's average
        assert grad == [[2.0 * (2 * rank + i)] * 3 for i in range(2)]
        assert disc_grad == 0.5                                 # mean of ranks 0 and 1
        assert stop == 15 and no_stop is None                   # a signal on one process stops both
        assert means == {"rec": 1.0, "kl_dim": [0.5, 4.0]}     # the global batch's numbers
