"""Split the items to label over processes so that each is labelled exactly once.

torch's DistributedSampler pads the last round with repeated items so every rank gets the same count;
for labeling that means duplicated work and output. Here rank r takes items r, r+W, r+2W, ... and no
padding; items a resumed run has already done are left out.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import DistributedSampler


class ExactShardSampler(DistributedSampler):
    """This rank's share of `range(num_items)`, minus `skip`; never a repeated item.

    A DistributedSampler subclass only so that Lightning sees the data as already sharded and does
    not wrap it in its own sampler.
    """

    def __init__(self, num_items: int, rank: int = 0, world_size: int = 1, skip: set[int] | frozenset = frozenset()):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside a world of {world_size} processes")
        # Deal out only what is left, so that a resumed run spreads its remaining work over every rank.
        self.indices = [i for i in range(num_items) if i not in skip][rank::world_size]
        self.num_replicas, self.rank, self.epoch = world_size, rank, 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
