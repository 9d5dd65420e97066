"""Choosing each row's next token: greedy (argmax) or sampled with the row's own random generator.

Sampling follows transformers' order (temperature, top-k, top-p, then a multinomial draw on the
softmax; top-k defaults to what `model.generate` uses: the model's generation config, else 50), one
row at a time with a `torch.Generator` seeded from the request's `seed`, so a seeded
request draws the same tokens whatever else shares the batch, and the same tokens as
`steerlab.generate(..., do_sample=True, seed=seed)` gives for that prompt alone.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import torch


@dataclass
class Sampler:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    top_k: int = 0  # 0 = off
    device: str | torch.device = "cpu"
    generator: torch.Generator | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.temperature > 0:
            self.generator = torch.Generator(device=self.device)
            self.generator.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def pick(self, logits: torch.Tensor) -> int:
        """`logits`: [vocab] for this row's last position."""
        if self.greedy:
            return int(torch.argmax(logits))
        x = logits.float()[None, :]
        if self.temperature != 1.0:
            x = x / self.temperature
        if self.top_k > 0:
            k = min(self.top_k, x.shape[-1])
            x = x.masked_fill(x < torch.topk(x, k)[0][..., -1, None], float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, sorted_idx = torch.sort(x, descending=False)
            cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
            remove = cum <= (1 - self.top_p)
            remove[..., -1:] = False  # keep at least one token
            x = x.masked_fill(remove.scatter(1, sorted_idx, remove), float("-inf"))
        probs = torch.softmax(x, dim=-1)
        return int(torch.multinomial(probs, num_samples=1, generator=self.generator)[0, 0])


def pick_tokens(logits: torch.Tensor, samplers: list[Sampler]) -> list[int]:
    """Next token for each row of `logits` [rows, vocab]; greedy rows in one argmax."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    return [g if s.greedy else s.pick(logits[i]) for i, (g, s) in enumerate(zip(greedy, samplers))]


def default_top_k(model) -> int:
    """The top-k `model.generate` samples with when not told: the generation config's, else transformers' 50."""
    k = getattr(getattr(model, "generation_config", None), "top_k", None)
    return 50 if k is None else int(k)
