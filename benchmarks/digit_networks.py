"""One SGD step of each built-in digit network, timed on the CPU (benchmarks/RESULTS.md, issue 21).

    python benchmarks/digit_networks.py            # torch's default threads (one per core)
    OMP_NUM_THREADS=1 python benchmarks/digit_networks.py

Each network comes from the ``digits`` backbone provider, wrapped in the harness's ``TransferModel``
(256-unit bottleneck, 10 classes), channels_last as the engine trains it; 128 random images of the
network's own size and channels; 5 warm-up steps, then the mean of 20.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from tlbench.models.transfer import TransferModel
from tlbench_builtins.backbones.digits import DigitNetworks

BATCH, WARMUP, STEPS = 128, 5, 20


def time_step(name: str) -> float:
    """Seconds per SGD step of network ``name`` on a batch of BATCH images."""
    provider = DigitNetworks()
    made, size = provider.create(name), provider.input_size(name)
    model = TransferModel(made.network, 10, bottleneck_dim=256, feature_dim=made.feature_dim, stages=made.stages)
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(BATCH, made.in_chans, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    for i in range(WARMUP + STEPS):
        if i == WARMUP:
            start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / STEPS


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}")
    for net in ("lenet", "dann_mnist", "dtn"):
        seconds = time_step(net)
        print(f"{net:12s} {seconds * 1000:7.1f} ms/step  {BATCH / seconds:7.0f} img/s")
