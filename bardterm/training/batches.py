"""Deterministic data order: the batch of every step is a pure function of (seed, step).

The training tokens are cut into non-overlapping blocks of `block_size + 1` tokens (inputs and the targets
shifted by one). Each epoch uses a fresh random shift of the block boundaries (a cheap augmentation, like
nanoGPT's random offsets) and a fresh random permutation of the blocks, both drawn from a generator seeded by
(seed, epoch). Epochs are concatenated into one stream of blocks; step `s` of a run with global batch `B`
takes stream positions [s*B, (s+1)*B). So resuming at step `s` replays exactly the same order, and nothing
about the data position needs saving except the step.
"""

from __future__ import annotations


class BlockStream:
    def __init__(self, ids, block_size: int, seed: int):
        import torch

        self.ids = ids
        self.block = block_size
        self.seed = seed
        n = len(ids)
        if n < block_size + 1:
            raise ValueError("too short")
        # A shift up to block-1 only when there is room for it and for at least one block.
        self.max_shift = block_size - 1 if n - 1 - (block_size - 1) >= block_size else n - 1 - block_size
        self.n_blocks = (n - 1 - self.max_shift) // block_size
        self._cache: dict[int, tuple[int, "torch.Tensor"]] = {}
        self._offsets = torch.arange(block_size + 1)

    def _epoch(self, epoch: int):
        import torch

        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            shift = int(torch.randint(0, self.max_shift + 1, (1,), generator=g)) if self.max_shift > 0 else 0
            perm = torch.randperm(self.n_blocks, generator=g)
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = (shift, perm)
        return self._cache[epoch]

    def starts(self, first: int, count: int):
        """Start offsets (into ids) of stream positions first..first+count-1."""
        out = []
        for pos in range(first, first + count):
            epoch, index = divmod(pos, self.n_blocks)
            shift, perm = self._epoch(epoch)
            out.append(shift + int(perm[index]) * self.block)
        return out

    def batch(self, first: int, count: int):
        import torch

        starts = torch.tensor(self.starts(first, count))
        rows = self.ids[starts[:, None] + self._offsets[None, :]]
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
