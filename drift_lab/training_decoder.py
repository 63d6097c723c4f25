"""Stage 1b: fine-tune the autoencoder's decoder on clips as long as the transformer's, the encoder frozen.

Stage 1 trains on short clips (``vae_clip_frames``, 13 frames for ``cpu``): its causal decoder is a
recurrence over latent frames, and unrolled further than it was trained it degrades with the frame index.
On the ``cpu`` autoencoder the reconstruction of held-out truth falls from ~31 dB over frames 0-13 to
~21.5 dB over frames 25-32 of the 33-frame training clip, while the same frames reconstructed from a clip
started at frame 20 score ~30 dB: the frames are not harder, the recurrence has drifted. No transformer can
then pass the gate's teacher-forced PSNR (> 25 dB over chunks 1 and 2), however exact its latents.

Only the decoder (``post_quant_conv`` and ``decoder``) is trained, on clips of the transformer's whole
training clip, with stage 1's object-weighted reconstruction loss. The encoder (and ``quant_conv``) is
frozen, so the latents are unchanged, bit for bit: transformers trained on stage 1's latents stay valid,
and the fine-tuned decoder can be installed into their model folders (:func:`install_decoder`):

    python -m drift_lab.train --stage decoder --vae-from VAE --out VAE2 ...   # train it (resumable)
    python -m drift_lab.training_decoder VAE2 MODEL [MODEL ...]               # install it into trained models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file, save_file

from drift_lab import training_loop as loop
from drift_lab.latents import pixels_to_vae_input
from drift_lab.model import MODEL_CARD_FILE, TRAINING_FILE, TrainingConfig, model_card
from drift_lab.training_data import render_clips, scene_seeds
from drift_lab.training_vae import decode_differentiable, object_weights, random_crops, reconstruction_error
from drift_lab.world import WorldSpec

DECODER_PARTS = ("post_quant_conv.", "decoder.")
VAE_WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def is_decoder_weight(name: str) -> bool:
    return name.startswith(DECODER_PARTS)


def train_decoder(
    vae: AutoencoderKLWan,
    world: WorldSpec,
    config: TrainingConfig,
    clip_frames: int,
    rng: np.random.Generator,
    dtype: torch.dtype,
    log_every: int,
    checkpointing: loop.Checkpointing | None = None,
) -> loop.Progress:
    """Fine-tune ``vae``'s decoder in place for ``config.decoder_steps`` steps on fresh ``clip_frames``-frame
    world clips (cropped to ``config.vae_crop``); the encoder's weights are left untouched."""
    device = vae.device

    def step(index: int) -> dict[str, float]:
        clips = random_crops(render_clips(world, scene_seeds(rng, config.vae_batch), clip_frames), config.vae_crop, rng)
        x = pixels_to_vae_input(clips.frames, device, torch.float32)
        weights = object_weights(clips.objects, config.vae_object_weight, device)
        with loop.autocast(device, dtype):
            with torch.no_grad():
                latents = vae.encode(x).latent_dist.mode()
            loss = reconstruction_error(decode_differentiable(vae, latents), x, weights)
        loop.optimizer_step(loss, vae, optimizer, scheduler, config.grad_clip)
        return {"mse": loss.item()}

    with loop.training_mode(vae):
        for name, parameter in vae.named_parameters():
            parameter.requires_grad_(is_decoder_weight(name))
        steps = config.decoder_steps
        warmup = max(1, steps // 20)
        optimizer, scheduler = loop.make_optimizer(vae, config.decoder_lr, 0.0, warmup, steps, config.min_lr_ratio)
        progress = loop.Progress("decoder", steps, log_every)
        return loop.run_steps(progress, vae, optimizer, scheduler, loop.Streams(rng), step, checkpointing)


def continued_decoder(record: dict[str, Any]) -> dict[str, Any]:
    """What a decoder stage that continues the decoder of ``record`` (its ``decoder`` entry) keeps of it: how
    it was trained and for how long, without its loss history."""
    return {key: value for key, value in record.items() if key not in ("history", "losses", "installed_from")}


def decoder_seconds(decoder: dict[str, Any]) -> float:
    """The wall time of a decoder stage, the decoder stages it continued included."""
    earlier = decoder.get("continues")
    return decoder["wall_seconds"] + (decoder_seconds(earlier) if earlier else 0.0)


def with_decoder_stage(metadata: dict[str, Any], decoder: dict[str, Any]) -> None:
    """Record the decoder stage ``decoder`` in a model's ``training.json`` dict, its time among the stages'
    (with the time of the decoder stages it continued)."""
    replaced = metadata.get("decoder")  # a decoder installed before this one
    earlier = decoder_seconds(replaced) if replaced else 0.0
    metadata["decoder"] = decoder
    seconds = round(decoder_seconds(decoder), 1)
    metadata.setdefault("stage_seconds", {})["decoder"] = seconds
    if "wall_seconds" in metadata:
        metadata["wall_seconds"] = round(metadata["wall_seconds"] - earlier + seconds, 1)


def differing_encoder_tensors(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], which: str) -> list[str]:
    """Names of the encoder tensors (everything but the decoder's) that differ between two autoencoders' weights;
    ``which`` names the two in the error raised when their architectures differ."""
    if ours.keys() != theirs.keys():
        raise ValueError(f"{which} hold autoencoders of different architectures")
    return [name for name in ours if not is_decoder_weight(name) and not torch.equal(ours[name], theirs[name])]


def install_decoder(model_folder: Path, decoder_folder: Path) -> None:
    """Put the fine-tuned decoder of ``decoder_folder`` (``--stage decoder``) into the model of ``model_folder``.

    The model's encoder must be the one the decoder was fine-tuned against, bit for bit: its latents, and so
    its transformer, are then unchanged. The model keeps its own VAE config (the latent statistics of its
    transformer's training pool); its ``training.json`` records the decoder stage and its card is rewritten.
    """
    ours_path = model_folder / "vae" / VAE_WEIGHTS_FILE
    ours, theirs = load_file(ours_path), load_file(decoder_folder / "vae" / VAE_WEIGHTS_FILE)
    differing = differing_encoder_tensors(ours, theirs, f"{model_folder} and {decoder_folder}")
    if differing:
        raise ValueError(
            f"the encoder of {model_folder} is not the one {decoder_folder}'s decoder was tuned on "
            f"({len(differing)} tensors differ, e.g. {differing[0]})"
        )
    save_file({name: theirs[name] if is_decoder_weight(name) else ours[name] for name in ours}, ours_path)
    record_path = model_folder / TRAINING_FILE
    metadata = json.loads(record_path.read_text())
    decoder_record: dict[str, Any] = json.loads((decoder_folder / TRAINING_FILE).read_text())["decoder"]
    with_decoder_stage(metadata, {**decoder_record, "installed_from": str(decoder_folder)})
    record_path.write_text(json.dumps(metadata, indent=2) + "\n")
    (model_folder / MODEL_CARD_FILE).write_text(model_card(metadata))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drift_lab.training_decoder",
        description="Install a decoder fine-tuned by --stage decoder into lab models trained on its encoder.",
    )
    parser.add_argument("decoder", type=Path, help="folder written by python -m drift_lab.train --stage decoder")
    parser.add_argument("models", type=Path, nargs="+", help="model folders to install it into")
    args = parser.parse_args(argv)
    record = json.loads((args.decoder / TRAINING_FILE).read_text())
    if not record.get("decoder", {}).get("finished"):
        print(f"error: {args.decoder} holds no finished decoder stage", file=sys.stderr)
        return 2
    for folder in args.models:
        try:
            install_decoder(folder, args.decoder)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(f"installed the decoder of {args.decoder} into {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
