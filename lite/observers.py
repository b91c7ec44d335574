"""Running per-channel statistics of activations (the observers of LMDeploy's CalibrationContext).

``ActivationObserver`` reduces every dim but the last: per channel max, min, mean, absmax, absmean.
``KVObserver`` reduces batch and sequence of ``[batch, seq, kv_heads, head_dim]``: per
(kv_head, head_dim) max, min, absmax. Running sums are float64 so means over millions of tokens stay exact.
"""
from __future__ import annotations

from typing import Dict

import torch


class ActivationObserver:
    def __init__(self):
        self.max = self.min = self.absmax = self.sum = self.abssum = None
        self.count = 0

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        mx, mn = x.amax(0).cpu(), x.amin(0).cpu()
        ab = x.abs()
        amx = ab.amax(0).cpu()
        # float32 sums within one call (at most a few thousand tokens), float64 across calls
        s, abs_s = x.sum(0).cpu().double(), ab.sum(0).cpu().double()
        if self.max is None:
            self.max, self.min, self.absmax, self.sum, self.abssum = mx, mn, amx, s, abs_s
        else:
            torch.maximum(self.max, mx, out=self.max)
            torch.minimum(self.min, mn, out=self.min)
            torch.maximum(self.absmax, amx, out=self.absmax)
            self.sum += s
            self.abssum += abs_s
        self.count += x.shape[0]

    def stats(self) -> Dict[str, torch.Tensor]:
        return {"max": self.max, "min": self.min, "mean": (self.sum / self.count).float(),
                "absmax": self.absmax, "absmean": (self.abssum / self.count).float()}


class KVObserver:
    def __init__(self):
        self.max = self.min = self.absmax = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """x: [batch, seq, kv_heads, head_dim]."""
        x = x.detach().float().flatten(0, 1)
        mx, mn = x.amax(0).cpu(), x.amin(0).cpu()
        amx = torch.maximum(mx.abs(), mn.abs())
        if self.max is None:
            self.max, self.min, self.absmax = mx, mn, amx
        else:
            torch.maximum(self.max, mx, out=self.max)
            torch.minimum(self.min, mn, out=self.min)
            torch.maximum(self.absmax, amx, out=self.absmax)

    def stats(self) -> Dict[str, torch.Tensor]:
        return {"max": self.max, "min": self.min, "absmax": self.absmax}
