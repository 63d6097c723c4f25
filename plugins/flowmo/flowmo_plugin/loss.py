"""FlowMo's motion-coherence loss on a prediction of a chunk's latent frames."""

from __future__ import annotations

import torch


def motion_variance(prediction: torch.Tensor) -> torch.Tensor:
    """The loss of each batch row: ``[B, F, C, H, W]`` -> ``[B]``.

    Per latent pixel: the distances between consecutive frames ``d_f = |p[:, f] - p[:, f-1]|``, their
    population variance over the ``F - 1`` distances, averaged over channels; the loss is the largest such
    value over the pixels (FlowMo's patch-wise variance with the latent pixel as the patch). Fewer than three
    frames give a variance of zero and no gradient. Computed in float32 at least.
    """
    if prediction.dim() != 5:
        raise ValueError(f"expected a [B, F, C, H, W] prediction; got shape {tuple(prediction.shape)}")
    prediction = prediction.to(torch.promote_types(prediction.dtype, torch.float32))
    motion = (prediction[:, 1:] - prediction[:, :-1]).abs()  # [B, F-1, C, H, W]
    variance = motion.var(dim=1, correction=0)  # [B, C, H, W]
    return variance.mean(dim=1).flatten(1).amax(dim=1)
