"""Augmentation of training batches: SpecAugment masks, speed perturbation, additive noise and mixup,
each drawn from the run's own generator."""

from __future__ import annotations

import torch
from scipy.special import betaincinv

from bench.training.config import TrainConfig


MASK_FRACTION = 0.2  # a time mask covers at most this share of its utterance (SpecAugment's p), a
# frequency mask at most this share of the bins


def spec_augment(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig) -> torch.Tensor:
    """SpecAugment on a padded batch ``(B, T, F)``: each utterance gets its own frequency and time masks
    (filled with 0, the normalized features' mean), drawn within its own length, so that no mask falls
    on padding and a time mask never covers more than a fifth of the utterance. Returns a new tensor.

    Each mask is drawn as torchaudio's ``mask_along_axis`` draws it (width ``floor(u * W)``, start
    ``floor(u' * (size - u * W))``, with ``W`` capped at a fifth of the size), for the whole batch at once:
    one loop over utterances and masks cost a third of a small model's training step."""
    if not (config.freq_masks and config.freq_mask_width) and not (config.time_masks and config.time_mask_width):
        return feats
    batch, frames, bins = feats.shape
    # A frequency mask covers at most a fifth of the bins too (12 of 80 log-mel bins: up to 12; 16 features: 3).
    freq_width = torch.full((batch,), float(min(config.freq_mask_width or 0, int(MASK_FRACTION * bins))))
    time_width = (MASK_FRACTION * lengths.float()).floor().clamp(max=float(config.time_mask_width or 0))
    masked_bins = _masks(config.freq_masks or 0, freq_width, torch.full((batch,), float(bins)), bins)
    masked_frames = _masks(config.time_masks or 0, time_width, lengths.float(), frames)
    inside = torch.arange(frames) < lengths[:, None]  # (B, T): frequency masks stop where the utterance ends
    return feats.masked_fill((masked_frames[:, :, None] | masked_bins[:, None, :]) & inside[:, :, None], 0.0)


def _masks(count: int, widths: torch.Tensor, sizes: torch.Tensor, axis: int) -> torch.Tensor:
    """``(B, axis)`` union of ``count`` masks per row, each of width ``floor(u * widths)`` starting at
    ``floor(u' * (sizes - u * widths))`` (``u, u'`` uniform in [0, 1)): inside ``[0, sizes)``."""
    if not count:
        return torch.zeros(len(widths), axis, dtype=torch.bool)
    value = torch.rand(len(widths), count) * widths[:, None]
    start = (torch.rand(len(widths), count) * (sizes[:, None] - value)).long()
    end = start + value.long()
    index = torch.arange(axis)
    return ((index >= start[..., None]) & (index < end[..., None])).any(1)


def augment_generator(seed: int) -> torch.Generator:
    """The generator of the training batches' mixup, speed and noise draws: seeded by the run seed, but a
    stream apart from the batch-order generator (seeded with ``seed`` itself)."""
    derived = torch.randint(2 ** 62, (1,), generator=torch.Generator().manual_seed(seed)).item()
    return torch.Generator().manual_seed(derived + 1)


def speed_perturb(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Speed perturbation on the feature frames of a padded batch ``(B, T, F)``: each utterance gets a
    factor drawn uniformly in ``[1 - s, 1 + s]`` (``s = config.speed_perturb``) and is resampled along
    time to ``round(length / factor)`` frames by linear interpolation, exactly what
    ``torch.nn.functional.interpolate(mode="linear", align_corners=False)`` does per utterance, here in
    one gather for the whole batch. It approximates waveform speed perturbation on the frames: a tempo
    change only (the spectrum of each frame, hence the pitch, is unchanged). Returns the re-padded batch
    (padding 0) and the new lengths; the batch itself when off."""
    if not config.speed_perturb:
        return feats, lengths
    source = lengths.to(torch.float64)
    factors = 1 + config.speed_perturb * (2 * torch.rand(len(lengths), generator=generator, dtype=torch.float64) - 1)
    new_lengths = torch.round(source / factors).long().clamp(min=1)
    frames = torch.arange(int(new_lengths.max()), dtype=torch.float64)
    # interpolate's source position of output frame j (align_corners=False): (j + 0.5) * in / out - 0.5, >= 0
    position = ((frames + 0.5) * (source / new_lengths)[:, None] - 0.5).clamp(min=0)  # (B, T')
    last = (lengths - 1)[:, None]
    below = torch.minimum(position.floor().long(), last)
    above = torch.minimum(below + 1, last)
    weight = (position - below).to(feats.dtype)[..., None]
    dims = feats.shape[2]
    out = torch.lerp(feats.gather(1, below[..., None].expand(-1, -1, dims)),
                     feats.gather(1, above[..., None].expand(-1, -1, dims)), weight)
    valid = (frames[None] < new_lengths[:, None])[..., None]
    return out.masked_fill(~valid, 0.0), new_lengths


def add_noise(feats: torch.Tensor, lengths: torch.Tensor, config: TrainConfig,
              generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise of standard deviation ``config.noise_std`` added to every valid (non-padded) frame
    of a padded batch of standardized features; padding stays as it is. The batch itself when off."""
    if not config.noise_std:
        return feats
    valid = (torch.arange(feats.shape[1])[None] < lengths[:, None])[..., None]
    noise = torch.randn(feats.shape, generator=generator, dtype=feats.dtype)
    return feats + config.noise_std * noise * valid


def mixup(feats: torch.Tensor, lengths: torch.Tensor, alpha: float, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixup of a padded batch: ``lam ~ Beta(alpha, alpha)`` for the batch (inverse CDF of a uniform
    from ``generator``) and a random partner ``perm[i]`` for each utterance; returns
    ``lam * feats + (1 - lam) * feats[perm]``, the lengths ``max(lengths, lengths[perm])`` (the shorter
    one counts as padded with zeros up to the longer), ``perm`` and ``lam``."""
    lam = float(betaincinv(alpha, alpha, torch.rand(1, generator=generator, dtype=torch.float64).item()))
    perm = torch.randperm(len(lengths), generator=generator)
    return lam * feats + (1 - lam) * feats[perm], torch.maximum(lengths, lengths[perm]), perm, lam
