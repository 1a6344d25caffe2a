"""In-place activations against out of place (issue 17): tf_efficientnet_lite0 at 224 px, 64 images a
step, train-mode forward, backward and SGD step, the two models alternating in one process.

    python benchmarks/inplace_activations.py [--rounds 4] [--steps 3]

Run it under tlbench's CPU runtime to compare like with like (``LD_PRELOAD=libjemalloc.so.2
MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 OMP_WAIT_POLICY=PASSIVE``). Under autograd an
in-place ReLU6 clones its input first (its backward reads it); ``activations_out_of_place`` (what
TransferModel applies) keeps the input instead. Prints img/s per round and whether the two models'
parameters are bit for bit equal after the same steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F
import torch.utils.deterministic as det
from torch import nn

from tlbench.models.transfer import activations_out_of_place

BATCH, SIZE, CLASSES = 64, 224, 31


def make_model(out_of_place: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)  # both models start from the same weights
    model = timm.create_model("tf_efficientnet_lite0", num_classes=CLASSES).train()
    model = model.to(memory_format=torch.channels_last)
    if out_of_place:
        activations_out_of_place(model)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and model")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)  # as the engine on the CPU
    det.fill_uninitialized_memory = False
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, SIZE, SIZE).to(memory_format=torch.channels_last)
    y = torch.randint(0, CLASSES, (BATCH,))
    arms = {"in place (timm's default)": make_model(False), "out of place (tlbench)": make_model(True)}
    for model, opt in arms.values():  # warm-up
        for _ in range(2):
            train_step(model, opt, x, y)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, (model, opt) in arms.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(model, opt, x, y)
            rates[name].append(BATCH * args.steps / (time.perf_counter() - start))
    for name, values in rates.items():
        print(f"{name:26s} {' '.join(f'{v:.2f}' for v in values)}  mean {statistics.mean(values):.2f} img/s")
    (a, _), (b, _) = arms.values()
    same = all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    print(f"parameters bit for bit equal after the same steps: {same}; torch threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
