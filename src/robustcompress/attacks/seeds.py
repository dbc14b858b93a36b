"""Seeds and per-sample random streams for attacks' own randomness (random starts, queries).

* :func:`draw_seed` and :func:`child_generator`: one seed (or a fresh generator seeded with it)
  drawn from the caller's generator, so a sub-computation's randomness is reproducible.
* :class:`SampleNoise`: randomness drawn per sample from per-sample generators seeded in order from
  the caller's generator, so random starts do not depend on how the data is batched.
"""

from __future__ import annotations

from typing import Optional

import torch


def draw_seed(generator: Optional[torch.Generator]) -> int:
    """One seed drawn from ``generator`` (on its own device), or from the global RNG when ``None``."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return int(torch.randint(0, 2**62, (1,), generator=generator, device=gdev))


def child_generator(generator: Optional[torch.Generator], device: torch.device) -> torch.Generator:
    """A fresh generator on ``device``, seeded with :func:`draw_seed` from ``generator``."""
    return torch.Generator(device=device).manual_seed(draw_seed(generator))


class SampleNoise:
    """Per-sample random streams, so random starts do not depend on how the data is batched.

    One seed per sample is drawn *in order* from ``generator`` (or the global RNG when ``None``);
    each sample then has its own ``torch.Generator`` on the inputs' device. The caller's generator
    advances by exactly ``n`` draws, so attacking ``x[:k]`` then ``x[k:]`` with one generator gives
    the same noise as attacking ``x`` at once.
    """

    def __init__(self, n: int, generator: Optional[torch.Generator], device: torch.device):
        self.device = torch.device(device)
        gdev = generator.device if generator is not None else torch.device("cpu")
        if gdev.type == "cpu":
            seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        else:  # one draw per call: CUDA generators are not prefix-consistent across sizes
            seeds = [draw_seed(generator) for _ in range(n)]
        self.generators = [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def select(self, index) -> "SampleNoise":
        """The streams of rows ``index`` (shared, not copied: drawing from the view advances them)."""
        view = SampleNoise.__new__(SampleNoise)
        view.device = self.device
        view.generators = [self.generators[int(i)] for i in index]
        return view

    def _rows(self, index) -> list[torch.Generator]:
        if index is None:
            return self.generators
        return [self.generators[int(i)] for i in index]

    def _draw(self, like: torch.Tensor, shape, index, fn) -> torch.Tensor:
        gens = self._rows(index)
        if len(gens) != like.shape[0]:
            raise ValueError(f"{len(gens)} sample streams for a batch of {like.shape[0]}")
        if not gens:
            return like.new_empty((0, *shape))
        return torch.stack([fn(shape, generator=g, device=like.device, dtype=like.dtype) for g in gens])

    def rand(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Uniform [0, 1) noise shaped like ``like`` (one row per sample)."""
        return self._draw(like, like.shape[1:], index, torch.rand)

    def randn(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Standard normal noise shaped like ``like``."""
        return self._draw(like, like.shape[1:], index, torch.randn)

    def rand_per_sample(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """One uniform [0, 1) number per sample, shape [B]."""
        return self._draw(like, (), index, torch.rand)


__all__ = ["SampleNoise", "child_generator", "draw_seed"]
