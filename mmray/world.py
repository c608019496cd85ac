"""Who this process is among the training workers, and the collectives methods may need.

It sits below methods and the loop (both import it), so a method never reaches up into `train/`.

Under Ray Train the process group is already initialised (gloo on CPU, NCCL on GPU); in-process
and in a single-worker Tune trial there is one worker and every collective is the identity.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class World:
    rank: int
    size: int
    device: torch.device

    @classmethod
    def current(cls, device: torch.device | None = None) -> "World":
        device = device or torch.device("cpu")
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), device)
        return cls(0, 1, device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """DDP over `module`; `find_unused_parameters` for a method that leaves some without a gradient in a step
        (outputs a loss ignores are covered by `with_every_output`, not by this)."""
        if self.size == 1:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D or N-D tensor from every worker along dim 0 (lengths may differ)."""
        if self.size == 1:
            return tensor
        length = torch.tensor([tensor.shape[0]], device=tensor.device)
        lengths = [torch.zeros_like(length) for _ in range(self.size)]
        dist.all_gather(lengths, length)
        longest = int(max(l.item() for l in lengths))
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[: int(n.item())] for p, n in zip(parts, lengths)])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `tensor` over every worker (a new tensor; the input is untouched)."""
        total = tensor.clone()
        if self.size > 1:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank `src`'s `tensor` on every worker (a new tensor; every rank passes one of the same shape and dtype)."""
        shared = tensor.clone()
        if self.size > 1:
            dist.broadcast(shared, src=src)
        return shared

    def with_every_output(self, loss: torch.Tensor, outputs) -> torch.Tensor:
        """Under DDP: `loss` plus zero times every forward output.

        DDP waits for a gradient for every parameter an output depends on, so a loss that ignores an
        output (aug never uses the model's fused head; a unimodal baseline ignores the other
        modality) would stall the next step. The added gradients are zeros: only weight decay moves
        those parameters.
        """
        if self.size == 1:
            return loss
        return loss + 0.0 * sum(t.sum() for t in outputs if isinstance(t, torch.Tensor))
