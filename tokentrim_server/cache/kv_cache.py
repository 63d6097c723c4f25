"""Per-session self-attention K/V cache of committed latent frames.

Layout: one contiguous buffer per layer, ``[batch, capacity, heads, head_dim]``, holding the committed
context tokens first and, behind them, the *pending* tokens of the chunk being denoised (written by every
denoising call, as the official code writes a block's slots before attending). Attention reads a
contiguous slice, so fused kernels need no mask.

Token bookkeeping (absolute latent frame and position inside the frame) is shared by all layers, because
every structural change (commit, eviction, token removal) applies to every layer alike. Removal and
eviction physically compact the buffers: a removed token can never take part in attention again, and
nothing is ever zeroed in place.

Sink frames are ``sink_frames`` latent frames from ``sink_start``: the first frames of the stream, until a
LongLive recache without a global sink (:meth:`reset`) makes the first frames it writes the sink. They are
never evicted and never lose tokens; every cached frame before ``sink_end`` is a sink frame.

A session's cache is created with the most frames its pipeline's rules let it hold (``capacity_frames``, the
bound admission control reserved): its buffers are allocated at that size on the first write, once, and a
write beyond it is a bug in the pipeline, reported as such. Without a capacity (direct use, tests) the buffers
grow geometrically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CacheStats:
    """Sizes a policy, the metrics and admission control read."""

    frames: int
    tokens: int
    bytes: int
    allocated_bytes: int


class KVCache:
    """K/V of committed frames for every transformer layer of one session."""

    def __init__(
        self, num_layers: int, tokens_per_frame: int, sink_frames: int = 0, capacity_frames: int | None = None
    ) -> None:
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0; got {sink_frames}")
        if capacity_frames is not None and capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be > 0; got {capacity_frames}")
        self.num_layers = num_layers
        self.tokens_per_frame = tokens_per_frame
        self.sink_frames = sink_frames
        self.sink_start = 0  # first frame of the sink
        self.capacity_tokens = None if capacity_frames is None else capacity_frames * tokens_per_frame
        self._k: list[torch.Tensor] = []
        self._v: list[torch.Tensor] = []
        self._token_frame = torch.empty(0, dtype=torch.long)
        self._token_pos = torch.empty(0, dtype=torch.long)
        self.length = 0  # committed tokens
        self._pending = 0  # tokens written behind the committed ones by the current call

    # ------------------------------------------------------------------ sizes
    @property
    def frames(self) -> list[int]:
        """Absolute indices of the committed frames, oldest first."""
        return torch.unique_consecutive(self._token_frame[: self.length]).tolist()

    @property
    def sink_end(self) -> int:
        """First frame after the sink: every cached frame before it is a sink frame."""
        return self.sink_start + self.sink_frames

    def context_frames(self) -> list[int]:
        """Absolute indices of the committed non-sink frames, oldest first."""
        return [frame for frame in self.frames if frame >= self.sink_end]

    def frame_token_counts(self) -> dict[int, int]:
        frames, counts = torch.unique_consecutive(self._token_frame[: self.length], return_counts=True)
        return dict(zip(frames.tolist(), counts.tolist(), strict=True))

    def stats(self) -> CacheStats:
        per_token = sum(k.shape[0] * k.shape[2] * k.shape[3] * k.element_size() * 2 for k in self._k)
        allocated = sum(k.numel() * k.element_size() * 2 for k in self._k)
        return CacheStats(len(self.frames), self.length, self.length * per_token, allocated)

    # ------------------------------------------------------------------ writes
    def write_pending(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a call's K/V behind the committed tokens (overwriting the previous call's)."""
        n = k.shape[1]
        self._ensure_capacity(k, self.length + n)
        self._k[layer][:, self.length : self.length + n] = k
        self._v[layer][:, self.length : self.length + n] = v
        self._pending = n

    def keys_values(self, layer: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Committed tokens from ``start`` followed by the pending ones: what a call attends to."""
        end = self.length + self._pending
        return self._k[layer][:, start:end], self._v[layer][:, start:end]

    def committed(self, layer: int, start: int = 0, end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length if end is None else end
        return self._k[layer][:, start:end], self._v[layer][:, start:end]

    def commit(self, frame_start: int, num_frames: int) -> None:
        """Turn the pending tokens (a whole chunk of ``num_frames`` frames) into committed context."""
        n = num_frames * self.tokens_per_frame
        if self._pending != n:
            raise RuntimeError(f"commit of {num_frames} frames expects {n} pending tokens, found {self._pending}")
        frames = torch.arange(frame_start, frame_start + num_frames).repeat_interleave(self.tokens_per_frame)
        positions = torch.arange(self.tokens_per_frame).repeat(num_frames)
        self._token_frame[self.length : self.length + n] = frames
        self._token_pos[self.length : self.length + n] = positions
        self.length += n
        self._pending = 0

    def discard_pending(self) -> None:
        self._pending = 0

    # ------------------------------------------------------------------ removal
    def evict_to(self, max_frames: int) -> int:
        """Drop the oldest non-sink frames until at most ``max_frames`` remain; returns frames dropped."""
        frames = self.frames
        excess = len(frames) - max_frames
        if excess <= 0:
            return 0
        movable = [f for f in frames if f >= self.sink_end]
        if excess > len(movable):
            raise ValueError(f"cannot keep {max_frames} frames with {self.sink_frames} sink frames")
        dropped = torch.tensor(movable[:excess])
        self._keep(~torch.isin(self._token_frame[: self.length], dropped))
        return excess

    def remove_positions(self, positions: torch.Tensor, frames: list[int] | None = None) -> int:
        """Remove token ``positions`` (indices inside a frame) from non-sink frames; returns tokens removed.

        ``frames`` limits the removal to those absolute frames (default: every cached non-sink frame).
        """
        token_frame = self._token_frame[: self.length]
        hit = torch.isin(self._token_pos[: self.length], positions.cpu()) & (token_frame >= self.sink_end)
        if frames is not None:
            hit &= torch.isin(token_frame, torch.tensor(frames, dtype=torch.long))
        removed = int(hit.sum())
        if removed:
            self._keep(~hit)
        return removed

    def drop_from(self, frame: int) -> None:
        """Forget committed frames ``>= frame`` (they are about to be written again)."""
        self.length = int((self._token_frame[: self.length] < frame).sum())
        self._pending = 0

    def reset(self, sink_start: int = 0) -> None:
        """Forget every committed frame, keeping the buffers; the next frames written from ``sink_start`` on are
        the sink (a LongLive recache without a global sink)."""
        self.length = self._pending = 0
        self.sink_start = sink_start

    def to(self, device: torch.device) -> None:
        """Move the buffers to ``device``, contents unchanged (the token bookkeeping lives on the CPU anyway)."""
        for buffers in (self._k, self._v):
            buffers[:] = [buffer.to(device) for buffer in buffers]

    def clear(self) -> None:
        """Free every buffer (the session is over)."""
        self._k.clear()
        self._v.clear()
        self._token_frame = torch.empty(0, dtype=torch.long)
        self._token_pos = torch.empty(0, dtype=torch.long)
        self.length = self._pending = 0

    def sink_tokens(self) -> int:
        """Committed tokens that belong to sink frames (they lead the buffer)."""
        return int((self._token_frame[: self.length] < self.sink_end).sum())

    def recent_start(self, num_frames: int) -> int:
        """Token index where the newest ``num_frames`` committed non-sink frames begin."""
        recent = self.context_frames()[-num_frames:] if num_frames > 0 else []
        if not recent:
            return self.length
        return int((self._token_frame[: self.length] < recent[0]).sum())

    def positions_of(self, frame: int) -> torch.Tensor:
        """Token positions still cached for one frame."""
        token_frame = self._token_frame[: self.length]
        return self._token_pos[: self.length][token_frame == frame]

    # ------------------------------------------------------------------ internals
    def _keep(self, keep: torch.Tensor) -> None:
        """Compact the committed tokens to those where ``keep`` is true (pending tokens are dropped)."""
        index = keep.nonzero().squeeze(1)
        n = index.numel()
        for buffers in (self._k, self._v):
            for layer, buffer in enumerate(buffers):
                buffers[layer][:, :n] = buffer.index_select(1, index.to(buffer.device))
        self._token_frame[:n] = self._token_frame[index]
        self._token_pos[:n] = self._token_pos[index]
        self.length = n
        self._pending = 0

    def _ensure_capacity(self, like: torch.Tensor, needed: int) -> None:
        capacity = self._token_frame.numel()
        if needed <= capacity and self._k:
            return
        if self.capacity_tokens is not None:
            if needed > self.capacity_tokens:
                raise RuntimeError(
                    f"the cache holds at most {self.capacity_tokens} tokens (its reservation); a write needs {needed}"
                )
            new_capacity = self.capacity_tokens
        else:  # grow geometrically, so an unbounded stream reallocates O(log n) times
            new_capacity = max(needed, 2 * capacity)
        shape = (like.shape[0], new_capacity, *like.shape[2:])
        for buffers in (self._k, self._v):
            for layer in range(self.num_layers):
                fresh = like.new_empty(shape)
                if layer < len(buffers):
                    fresh[:, : self.length] = buffers[layer][:, : self.length]
                    buffers[layer] = fresh
                else:
                    buffers.append(fresh)
        for name in ("_token_frame", "_token_pos"):
            fresh_index = torch.full((new_capacity,), -1, dtype=torch.long)
            fresh_index[: self.length] = getattr(self, name)[: self.length]
            setattr(self, name, fresh_index)
