"""A client's calibrated loss profiles: what its proxy attacker sees under
``privacy.attacker_features = "calibrated-profile"``.

A sample's profile holds, for each of ``privacy.attacker_profile_bands`` timestep bands, the relative
change of its mean denoising loss against the base model's on the same fixed (t, ε) draws,
(ℓ − ℓ_base) / ℓ_base: the loss-calibrated attack's score split by noise level (the small-t band is
where score-norm, PIA and SecMI look), averaged over ``privacy.attacker_feature_draws`` draws so that
a proxy on it can be as sharp as the evaluation's attacks. On single-draw maps the proxy stayed at
chance (docs/results.md, smp-search) and SMP-LoRA followed its input gradients, which were noise.

Each row has its own fixed draws (seeded by the row), so a profile changes only with the model. The
LoRA step recomputes its batch's rows (K no-grad passes per member, the base model's side cached once
per round); the rows no step trains on, D^nm_aux, are recomputed every ``privacy.attacker_refresh_steps``
steps. The step's feature carries the recomputed value with a
gradient from the step's own draw (a straight-through estimate): for a sample whose draw has t in
band b, 1{t ∈ b} / P(b) · ∇ℓ / ℓ̄_base,b is an unbiased estimate of the gradient of its band-b entry,
and the other entries get none from that draw. (A value left stale between refreshes let the push run
open-loop for the whole interval: the members' losses rose 40-fold in one round.)

What the proxy trains on is another matter: members recomputed every step next to D^nm_aux rows up to
``attacker_refresh_steps`` old differ by how far the model moved in between, and at lr 1e-2 the proxy learned
to read that as membership (on configs/default.toml, seeds 0 and 1: accuracy 0.58-0.71 per round on what it
trained on, 0.39 on its own fresh D_te over 80 client rounds each: it scored the members the wrong way round,
so its push pointed the wrong way too). Under ``privacy.profile_snapshot``
each refresh recomputes every row and keeps them as the snapshot the proxy trains on, all by one model.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch.nn import functional as F

from ..device import NO_MIXED, autocast
from ..models.diffusion import SampleSet, squared_error_map

Reference = Callable[[], AbstractContextManager[Any]]  # while entered, the UNet computes the base model
BATCH = 256
# Relative changes are a few per cent; in tenths they sit on the unit scale the proxy's initialisation expects
SCALE = 10.0


def band_edges(num_timesteps: int, bands: int) -> torch.Tensor:
    """(bands + 1,) timestep edges spaced quadratically, T·(b/B)², so that the low-noise end, where
    memorisation shows most, gets bands of its own: 0, 62, 250, 562, 1000 for T = 1000, B = 4."""
    edges = [round(num_timesteps * (b / bands) ** 2) for b in range(bands + 1)] if bands >= 1 else []
    if len(edges) < 2 or any(hi <= lo for lo, hi in zip(edges, edges[1:])):
        raise ValueError(
            f"privacy.attacker_profile_bands = {bands} does not split {num_timesteps} timesteps into non-empty "
            "bands; use fewer bands"
        )
    return torch.tensor(edges, dtype=torch.long)


def row_seed(seed: int, row: int) -> int:
    """A 63-bit seed of its own for each row (golden-ratio multiplicative hashing of the row)."""
    return (seed ^ (row * 0x9E3779B97F4A7C15)) & (2**63 - 1)


def band_of(t: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """The band index of each timestep (edges[b] <= t < edges[b + 1])."""
    return torch.bucketize(t, edges[1:-1].to(t.device), right=True)


class LossProfiles:
    """The profiles of one set of samples (rows), refreshed on demand from the UNet as it is now."""

    def __init__(
        self,
        unet: Any,
        scheduler: Any,
        samples: SampleSet,
        reference: Reference,
        draws: int,
        bands: int,
        seed: int,
        precision: str = NO_MIXED,
        trained_rows: int = 0,
    ):
        if draws % bands:
            raise ValueError(
                f"privacy.attacker_feature_draws = {draws} must be a multiple of "
                f"privacy.attacker_profile_bands = {bands}"
            )
        self.unet, self.scheduler, self.samples, self.reference = unet, scheduler, samples, reference
        self.draws, self.bands, self.seed, self.precision = draws, bands, seed, precision
        num_timesteps = int(scheduler.config.num_train_timesteps)
        self.edges = band_edges(num_timesteps, bands)
        self.band_probability = (self.edges[1:] - self.edges[:-1]).float() / num_timesteps
        self.base: torch.Tensor | None = None  # (N, bands) mean base losses, once
        self.values: torch.Tensor | None = None  # (N, bands) relative changes at the last refresh
        self.snapshot: torch.Tensor | None = None  # every row by one model, at the last refresh_all
        self.refreshes = 0
        # rows [0, trained_rows) are recomputed by the LoRA steps that train on them; the rest only by refresh_untrained
        self.trained_rows = trained_rows
        self.untrained = torch.arange(trained_rows, len(samples))

    def __len__(self) -> int:
        return len(self.samples)

    def draws_of(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's fixed draws, (n, K, C, h, w) noise and (n, K) timesteps: seeded by (seed, row), so a
        row draws the same whichever rows it is computed with. Draw d lies in band d mod B."""
        shape = self.samples.latents.shape[1:]
        noise = torch.empty(len(rows), self.draws, *shape)
        t = torch.empty(len(rows), self.draws, dtype=torch.long)
        lo = self.edges[torch.arange(self.draws) % self.bands]
        width = (self.edges[1:] - self.edges[:-1])[torch.arange(self.draws) % self.bands]
        for i, row in enumerate(rows.tolist()):
            gen = torch.Generator().manual_seed(row_seed(self.seed, int(row)))  # on the CPU: any device agrees
            noise[i] = torch.randn((self.draws, *shape), generator=gen)
            t[i] = lo + (torch.rand(self.draws, generator=gen) * width).long().clamp_max(width - 1)
        return noise, t

    @torch.no_grad()
    def band_losses(self, rows: torch.Tensor) -> torch.Tensor:
        """(n, bands): these rows' mean loss per band over their fixed draws, under the UNet as it is now."""
        latents, cond = self.samples.latents, self.samples.cond
        device = latents.device
        noise, t = self.draws_of(rows)
        n, k = t.shape
        at = rows.to(device).repeat_interleave(k)  # (n*K,) row of each draw
        flat_noise, flat_t = noise.reshape(n * k, *noise.shape[2:]).to(device), t.reshape(-1).to(device)
        losses = torch.empty(n * k, device=device)
        with autocast(device, self.precision):
            for i in range(0, n * k, BATCH):
                sl = slice(i, i + BATCH)
                rs = at[sl]
                err = squared_error_map(self.unet, self.scheduler, latents[rs], cond[rs], flat_noise[sl], flat_t[sl])
                losses[sl] = err.float().mean(dim=(1, 2, 3))
        per_band = losses.reshape(n, k // self.bands, self.bands)  # draw d = j * B + b
        return per_band.mean(dim=1)

    def refresh(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Recompute these rows (all when None) from the current model; returns every row's profile.
        The base model's side is computed once, for every row."""
        every = torch.arange(len(self.samples))
        if self.base is None:
            with self.reference():
                self.base = self.band_losses(every).clamp_min(1e-12)
        if self.values is None:
            rows = every
            self.values = torch.zeros_like(self.base)
        rows = every if rows is None else rows.cpu()
        dev = self.base.device
        at = rows.to(dev)
        self.values[at] = SCALE * (self.band_losses(rows) - self.base[at]) / self.base[at]
        self.refreshes += 1
        return self.values

    def refresh_untrained(self) -> torch.Tensor:
        """Every row the first time, then the rows no LoRA step recomputes (they drift with the model too)."""
        return self.refresh(None if self.values is None else self.untrained)

    def refresh_all(self) -> torch.Tensor:
        """Every row from the model as it is now, kept as the snapshot ``rows`` then serves: members and
        non-members by one model, however often the steps recompute their own rows in between."""
        self.snapshot = self.refresh(None).clone()
        return self.snapshot

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The profiles of these rows as the proxy trains on them: the snapshot if one was taken, else the
        cached values (all rows computed first if never)."""
        values = self.snapshot if self.snapshot is not None else self.values
        values = values if values is not None else self.refresh()
        return values[index.to(values.device)]

    def straight_through(self, index: torch.Tensor, ell: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(B, bands): the batch's rows (recomputed from the model as it is now if they are trained rows,
        else as last refreshed), differentiable through
        ``ell`` (each sample's loss at the step's own draw, at ``t``) by the unbiased one-draw estimate above."""
        cached = self.refresh(index)[index.to(ell.device)] if self.trained_rows else self.rows(index)
        assert self.base is not None
        hit = F.one_hot(band_of(t, self.edges), self.bands).to(cached)
        weight = SCALE * hit / self.band_probability.to(cached)[None, :] / self.base[index.to(cached.device)]
        return cached + weight * (ell - ell.detach())[:, None]
