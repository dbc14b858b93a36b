"""Seeds and per-sample random streams for attacks' own randomness (random starts, queries).

* :func:`draw_seed` and :func:`child_generator`: one seed (or a fresh generator seeded with it)
  drawn from the caller's generator, so a sub-computation's randomness is reproducible.
* :class:`SampleNoise`: randomness drawn per sample from per-sample streams seeded in order from
  the caller's generator, so random starts do not depend on how the data is batched.
"""

from __future__ import annotations

from typing import Optional

import torch

from robustcompress.triton_support import cuda_kernels


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
    each sample then has its own stream on the inputs' device. The caller's generator advances by
    exactly ``n`` draws, so attacking ``x[:k]`` then ``x[k:]`` with one generator gives the same
    noise as attacking ``x`` at once. A stream is a ``torch.Generator`` per sample on CPU (or
    without triton), and on CUDA a counter-based Philox stream per sample, one launch a batch
    (:mod:`robustcompress.attacks._noise_triton`): the same seeds give other numbers there.
    """

    def __init__(self, n: int, generator: Optional[torch.Generator], device: torch.device):
        self.device = torch.device(device)
        kernels = _noise_kernels(self.device)
        if kernels is None:
            seeds = _seeds(n, generator)
            self._streams = _GeneratorStreams(seeds.tolist() if torch.is_tensor(seeds) else seeds,
                                              self.device)
        else:
            self._streams = _PhiloxStreams(kernels, *_philox_rows(n, generator, self.device))
        self._rows: Optional[list[int]] = None  # the rows of the streams this object draws from

    def select(self, index) -> "SampleNoise":
        """The streams of rows ``index`` (shared, not copied: drawing from the view advances them)."""
        view = SampleNoise.__new__(SampleNoise)
        view.device, view._streams = self.device, self._streams
        index = [int(i) for i in index]
        view._rows = index if self._rows is None else [self._rows[i] for i in index]
        return view

    def _draw(self, like: torch.Tensor, shape, index, normal: bool) -> torch.Tensor:
        rows = self._rows
        if index is not None:
            index = [int(i) for i in index]
            rows = index if rows is None else [rows[i] for i in index]
        count = self._streams.n if rows is None else len(rows)
        if count != like.shape[0]:
            raise ValueError(f"{count} sample streams for a batch of {like.shape[0]}")
        if count == 0:
            return like.new_empty((0, *shape))
        return self._streams.draw(rows, (count, *shape), like.dtype, like.device, normal)

    def rand(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Uniform [0, 1) noise shaped like ``like`` (one row per sample)."""
        return self._draw(like, like.shape[1:], index, normal=False)

    def randn(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """Standard normal noise shaped like ``like``."""
        return self._draw(like, like.shape[1:], index, normal=True)

    def rand_per_sample(self, like: torch.Tensor, index=None) -> torch.Tensor:
        """One uniform [0, 1) number per sample, shape [B]."""
        return self._draw(like, (), index, normal=False)


def _seeds(n: int, generator: Optional[torch.Generator]):
    """``n`` seeds drawn in order from ``generator``: a CPU tensor, or a list of host ints where
    the generator is on an accelerator (one draw, and one host sync, per seed)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    if gdev.type == "cpu":
        return torch.randint(0, 2**62, (n,), generator=generator)
    # one draw per call: CUDA generators are not prefix-consistent across sizes
    return [draw_seed(generator) for _ in range(n)]


#: Philox key of streams taken from an accelerator generator's state: its seed XOR this, so
#: they never coincide with the generator's own draws (torch keys those with the seed itself)
_STREAM_DOMAIN = 0x5A3C_96E1_0F2D_B487


def _philox_rows(n: int, generator: Optional[torch.Generator], device: torch.device):
    """``(keys, streams)`` of ``n`` per-sample Philox streams on ``device``, in order from
    ``generator``, which advances as if by ``n`` draws. A CPU generator (or the global CPU RNG):
    one drawn seed a sample, stream 0. An accelerator's generator: no draw and no host sync; key
    from its seed, streams ``offset/4 + i`` from its Philox offset (advanced by ``4n``, so
    splitting a batch over several calls gives the same streams)."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    if gdev.type == "cpu":
        keys = _seeds(n, generator).to(device, non_blocking=True)
        return keys, torch.zeros(n, dtype=torch.int64, device=device)
    offset = generator.get_offset()
    generator.set_offset(offset + 4 * n)
    key = generator.initial_seed() ^ _STREAM_DOMAIN
    key = key - 2**64 if key >= 2**63 else key  # as int64
    first = offset // 4
    return (torch.full((n,), key, dtype=torch.int64, device=device),
            torch.arange(first, first + n, dtype=torch.int64, device=device))


class _GeneratorStreams:
    """One ``torch.Generator`` per sample (CPU, or CUDA without triton)."""

    def __init__(self, seeds: list[int], device: torch.device):
        self.n = len(seeds)
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def draw(self, rows, shape, dtype, device, normal: bool) -> torch.Tensor:
        gens = self.generators if rows is None else [self.generators[i] for i in rows]
        fn = torch.randn if normal else torch.rand
        return torch.stack([fn(shape[1:], generator=g, device=device, dtype=dtype) for g in gens])


class _PhiloxStreams:
    """Counter-based streams: a key, a stream number and a draw count per sample, on the device."""

    def __init__(self, kernels, keys: torch.Tensor, streams: torch.Tensor):
        self.n, self.kernels, self.keys, self.streams = len(keys), kernels, keys, streams
        self.draws = torch.zeros(self.n, dtype=torch.int64, device=keys.device)

    def draw(self, rows, shape, dtype, device, normal: bool) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=self.keys.device)
        if rows is None:
            self.kernels.fill(out, self.keys, self.streams, self.draws, normal)
            self.draws += 1
        else:
            idx = torch.tensor(rows, dtype=torch.int64).to(self.keys.device, non_blocking=True)
            self.kernels.fill(out, self.keys[idx], self.streams[idx], self.draws[idx], normal)
            self.draws.index_add_(0, idx, torch.ones_like(idx))
        return out.to(device)


def _noise_kernels(device: torch.device):
    """The Triton kernel for ``device`` (CUDA only), or ``None`` (per-sample generators)."""
    return cuda_kernels(device, "robustcompress.attacks._noise_triton", _warm_up, "sample noise")


def _warm_up(kernels, device: str) -> None:
    zeros = torch.zeros(2, dtype=torch.int64, device=device)
    for normal in (False, True):  # float32, what attacks draw (other dtypes compile on first use)
        kernels.fill(torch.empty(2, 8, device=device), zeros, zeros, zeros, normal)


__all__ = ["SampleNoise", "child_generator", "draw_seed"]
