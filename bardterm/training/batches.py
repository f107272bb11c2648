"""Deterministic data order: the batch of every step is a pure function of (seed, step).

The training tokens are cut into non-overlapping blocks of `block_size + 1` tokens (inputs and the targets
shifted by one). Each epoch uses a fresh random shift of the block boundaries (a cheap augmentation, like
nanoGPT's random offsets) and a fresh random permutation of the blocks, both drawn from a generator seeded by
(seed, epoch). Epochs are concatenated into one stream of blocks; step `s` of a run with global batch `B`
takes stream positions [s*B, (s+1)*B). So resuming at step `s` replays exactly the same order, and nothing
about the data position needs saving except the step.

With BPE-dropout, `retokenize(epoch)` gives each epoch its own tokens of the same text. An epoch still has as
many blocks as the plain tokens make; the dropout tokens are longer, so each epoch draws that many of their
blocks.
"""

from __future__ import annotations


def _layout(n_ids: int, block: int) -> tuple[int, int]:
    """(largest boundary shift, number of blocks) for a stream of n_ids tokens."""
    if n_ids < block + 1:
        raise ValueError("too short")
    # A shift up to block-1 only when there is room for it and for at least one block.
    max_shift = block - 1 if n_ids - 1 - (block - 1) >= block else n_ids - 1 - block
    return max_shift, (n_ids - 1 - max_shift) // block


class BlockStream:
    def __init__(self, ids, block_size: int, seed: int, *, retokenize=None):
        self.ids = ids
        self.block = block_size
        self.seed = seed
        self.retokenize = retokenize
        self.n_blocks = _layout(len(ids), block_size)[1]  # blocks per epoch, whatever the epoch's tokens
        self._cache: dict[int, tuple] = {}

    def _epoch(self, epoch: int):
        """(tokens, shift, block order) of one epoch."""
        import torch

        if epoch not in self._cache:
            ids = self.ids if self.retokenize is None else self.retokenize(epoch)
            max_shift, n_blocks = _layout(len(ids), self.block)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            shift = int(torch.randint(0, max_shift + 1, (1,), generator=g)) if max_shift > 0 else 0
            perm = torch.randperm(n_blocks, generator=g)
            if len(self._cache) > 4:
                self._cache.clear()
            self._cache[epoch] = (ids, shift, perm)
        return self._cache[epoch]

    def _block(self, pos: int):
        epoch, index = divmod(pos, self.n_blocks)
        ids, shift, perm = self._epoch(epoch)
        return ids, shift + int(perm[index % len(perm)]) * self.block

    def starts(self, first: int, count: int):
        """Start offsets (into that epoch's tokens) of stream positions first..first+count-1."""
        return [self._block(pos)[1] for pos in range(first, first + count)]

    def batch(self, first: int, count: int):
        import torch

        rows = []
        for pos in range(first, first + count):
            ids, start = self._block(pos)
            rows.append(ids[start:start + self.block + 1])
        rows = torch.stack(rows)
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()
