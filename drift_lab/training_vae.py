"""Stage 1: train the Wan autoencoder on world clips.

Loss: MSE reconstruction in ``[-1, 1]`` pixels, plus ``vae_kl_weight`` times the per-element KL of the
posterior to N(0, 1) (a light pull that keeps latents bounded; their scale is set afterwards by the latent
statistics), plus a decaying *latent guide*. The posterior mean is decoded, not a sample: the lab encodes
with the mean too, and sampling noise drowns the small early latents and slows learning.

Why a guide: a small Wan VAE trained from scratch sits for hundreds of steps on the blurry mean image before
its decoder starts to use the latents (the gradient reaching the encoder through a random decoder is weak),
and a CPU budget is a few hundred steps. The guide asks the first 12 latent channels to hold the clip's
colours pooled over 4x4 pixels, space-to-depth packed into the 8x8 latent cell (and, in time, the first frame
alone, then each group of four frames averaged, the VAE's own grouping). That gives the encoder a direct
target from step one and the decoder informative latents to learn from; the weight decays linearly to 0, so
by the end (or by ``vae_guide_fraction`` of the steps) reconstruction alone shapes the latent space. Both
MSE (not L1) and the guide were chosen in the feasibility runs: with L1 the median-seeking reconstruction
ignores the few-percent object pixels longest.

Objects are a few percent of the pixels, and what the lab measures is whether they survive, so their pixels
may weigh more in the reconstruction loss (``vae_object_weight``; 1 is plain MSE). Without it the cheapest
error to leave is a small object blurred into its background, which is exactly an object lost.

Clips are short (``vae_clip_frames`` = 1 + 4k) and may be random crops (``vae_crop``): convolutions are
translation-equivariant, so a crop trains the same kernels at a fraction of the cost. k >= 2 lets the
feature caches of later groups (which only follow another group of four) be trained, not only the first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from drift_lab.latents import TEMPORAL_SCALE, pixels_to_vae_input
from drift_lab.model import VAE_SPATIAL_SCALE, TrainingConfig
from drift_lab.training_data import Clips, render_clips, scene_seeds
from drift_lab.training_loop import (
    Checkpointing,
    Progress,
    Streams,
    autocast,
    make_optimizer,
    object_loss_weights,
    optimizer_step,
    run_steps,
    training_mode,
)
from drift_lab.world import WorldSpec

GUIDE_POOL = VAE_SPATIAL_SCALE // 2  # 4x4-pixel colour cells, 2x2 of them per latent cell
GUIDE_CHANNELS = 3 * (VAE_SPATIAL_SCALE // GUIDE_POOL) ** 2  # 12


def decode_differentiable(vae: AutoencoderKLWan, z: torch.Tensor) -> torch.Tensor:
    """Decode ``z`` ``[B, C, F, h, w]`` to ``[B, 3, T, H, W]`` with autograd and without the final clamp.

    ``vae.decode`` clamps to ``[-1, 1]``, which would zero the gradient of every pixel pushed past the range
    (and leave it stuck there). The decoder runs latent frame by latent frame with a feature cache, as both
    ``vae.decode`` and the server's streaming decoder do, so the decoded frames are the same ones.
    """
    x = vae.post_quant_conv(z)
    cache: list[torch.Tensor | str | None] = [None] * sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
    frames = [
        vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0) for i in range(x.shape[2])
    ]
    return torch.cat(frames, dim=2)


def latent_guide(x: torch.Tensor) -> torch.Tensor:
    """The guide's target ``[B, 12, F, h, w]`` for pixels ``x`` ``[B, 3, T, H, W]`` (see the module doc)."""
    first, rest = x[:, :, :1], x[:, :, 1:]
    batch, channels, frames, height, width = rest.shape
    groups = rest.reshape(batch, channels, frames // TEMPORAL_SCALE, TEMPORAL_SCALE, height, width).mean(3)
    pooled = F.avg_pool3d(torch.cat([first, groups], dim=2), (1, GUIDE_POOL, GUIDE_POOL))
    # Space-to-depth per latent frame: [B, 3, F, 2h, 2w] -> [B, 12, F, h, w].
    per_frame = pooled.transpose(1, 2).flatten(0, 1)
    packed = F.pixel_unshuffle(per_frame, VAE_SPATIAL_SCALE // GUIDE_POOL)
    return packed.unflatten(0, (batch, -1)).transpose(1, 2)


def reconstruction_error(decoded: torch.Tensor, x: torch.Tensor, pixel_weights: torch.Tensor | None) -> torch.Tensor:
    """Squared error of ``decoded`` against ``x`` (``[B, 3, T, H, W]``), a mean weighted by ``pixel_weights``
    ``[B, 1, T, H, W]`` (None: the plain mean)."""
    error = (decoded.float() - x.float()).square()
    if pixel_weights is None:
        return error.mean()
    return (error * pixel_weights).sum() / (pixel_weights.sum() * x.shape[1])


def vae_losses(
    vae: AutoencoderKLWan,
    x: torch.Tensor,
    kl_weight: float,
    guide_weight: float,
    teacher: float,
    pixel_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one batch ``x`` ``[B, 3, T, H, W]`` in ``[-1, 1]``, and its parts for logging.

    ``teacher`` in ``[0, 1]`` blends the guide target into the guided latent channels the decoder reads
    (1: the decoder reads the target itself, 0: a plain autoencoder). ``pixel_weights`` ``[B, 1, T, H, W]``
    make the reconstruction a weighted mean (None: the plain mean).
    """
    posterior = vae.encode(x).latent_dist
    mean, logvar = posterior.mean.float(), posterior.logvar.float()
    target = latent_guide(x.float())
    guided = teacher * target + (1.0 - teacher) * mean[:, :GUIDE_CHANNELS]
    decoded = decode_differentiable(vae, torch.cat([guided, mean[:, GUIDE_CHANNELS:]], dim=1).to(posterior.mean.dtype))
    reconstruction = reconstruction_error(decoded, x, pixel_weights)
    kl = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()
    guide = (mean[:, :GUIDE_CHANNELS] - target).square().mean()
    loss = reconstruction + kl_weight * kl + guide_weight * guide
    return loss, {"loss": loss.item(), "mse": reconstruction.item(), "kl": kl.item(), "guide": guide.item()}


def random_crops(clips: Clips, size: int | None, rng: np.random.Generator) -> Clips:
    """One random ``size`` x ``size`` window per clip (the whole frame for ``None``), on the VAE's 8-pixel
    grid so a crop's latents line up with the full frame's."""
    if size is None:
        return clips
    batch, _, height, width, _ = clips.frames.shape
    rows = rng.integers(0, (height - size) // VAE_SPATIAL_SCALE + 1, size=batch) * VAE_SPATIAL_SCALE
    columns = rng.integers(0, (width - size) // VAE_SPATIAL_SCALE + 1, size=batch) * VAE_SPATIAL_SCALE
    windows = [clip[:, r : r + size, c : c + size] for clip, r, c in zip(clips.frames, rows, columns, strict=True)]
    objects = [mask[:, r : r + size, c : c + size] for mask, r, c in zip(clips.objects, rows, columns, strict=True)]
    return Clips(np.stack(windows), clips.captions, np.stack(objects))


def object_weights(objects: np.ndarray, weight: float, device: torch.device) -> torch.Tensor | None:
    """Per-pixel loss weights ``[B, 1, T, H, W]``: ``weight`` on object pixels, 1 elsewhere (None for 1)."""
    return object_loss_weights(torch.from_numpy(objects)[:, None].to(device), weight)


def schedule_weights(config: TrainingConfig, step: int) -> tuple[float, float]:
    """The guide's weight and the teacher blend at ``step``: linear decays over their fractions of the run."""
    fraction = step / config.vae_steps
    guide_weight = config.vae_guide_weight * max(0.0, 1.0 - fraction / config.vae_guide_fraction)
    teacher = max(0.0, 1.0 - fraction / config.vae_teacher_fraction) if config.vae_teacher_fraction else 0.0
    return guide_weight, teacher


def train_vae(
    vae: AutoencoderKLWan,
    world: WorldSpec,
    config: TrainingConfig,
    rng: np.random.Generator,
    dtype: torch.dtype,
    log_every: int,
    checkpointing: Checkpointing | None = None,
) -> Progress:
    """Train ``vae`` in place for ``config.vae_steps`` steps on fresh world clips; returns the logged progress
    (``done`` < ``total`` when ``checkpointing`` stopped it early)."""
    device = vae.device
    steps = config.vae_steps

    def step(index: int) -> dict[str, float]:
        clips = random_crops(render_clips(world, scene_seeds(rng, config.vae_batch), config.vae_clip_frames),
                             config.vae_crop, rng)  # fmt: skip
        x = pixels_to_vae_input(clips.frames, device, torch.float32)
        guide_weight, teacher = schedule_weights(config, index)
        weights = object_weights(clips.objects, config.vae_object_weight, device)
        with autocast(device, dtype):
            loss, parts = vae_losses(vae, x, config.vae_kl_weight, guide_weight, teacher, weights)
        optimizer_step(loss, vae, optimizer, scheduler, config.grad_clip)
        return parts

    with training_mode(vae):
        # After training_mode: the optimiser takes the parameters it made trainable.
        optimizer, scheduler = make_optimizer(vae, config.vae_lr, 0.0, max(1, steps // 20), steps, config.min_lr_ratio)
        progress = Progress("vae", steps, log_every)
        return run_steps(progress, vae, optimizer, scheduler, Streams(rng), step, checkpointing)
