"""The arms of the drift evaluation: TokenTrim, its controls, and the pruning-ratio ablation.

An arm is a pipeline plus a factory of cache policies (one fresh policy per rollout). TokenTrim and the
``random`` control are the installed plugins, built through the entry-point registry exactly as the server
builds them. The lab-only controls wrap a registry-built TokenTrim policy, so they share its trigger rule,
its budget ``ceil(p N)`` and its running statistics by construction, and change one thing each:

* ``regenerate``: triggers where TokenTrim triggers and regenerates, but prunes nothing. The engine
  regenerates with the same noise from the same cache, so its video must equal ``none``'s: it isolates the
  pruning from the act of regenerating (only its wall time differs).
* ``always_trim``: prunes TokenTrim's top-p drift positions at every chunk that has a previous chunk, then
  regenerates once: is *detecting* drift worth anything over pruning blindly every time?
* ``oracle``: judges the candidate against the *true* chunk (the encoded ground-truth video) instead of the
  previous chunk: per-token error vs the truth, severity = mean error over the top-p tokens, trigger when
  it exceeds the running mean + lambda * std of accepted chunks' severities (TokenTrim's warm-up), and
  prune those top-p tokens. The best a drift detector of this form could do.

Self Forcing arms inspect the first denoising step (TokenTrim's default) unless named ``*_final``; Rolling
Forcing denoises blocks jointly, so every Rolling Forcing arm inspects final blocks.

An arm may also name session hooks (registry names and parameters, built fresh per rollout): the ``*flowmo``
arms add the installed ``flowmo`` hook with its defaults on the first generated chunk. ``tokentrim_flowmo``
(``tokentrim_final_flowmo``) is the paper's full method, so ``tokentrim`` (``tokentrim_final``) against it is
the paper's "w/o FlowMo" ablation; ``flowmo`` against ``none`` is FlowMo alone. With its defaults FlowMo
barely moves a 4-step model's chunk, so ``flowmo_x0`` runs the documented setting that does (every step,
loss on the x0 prediction, lr 1e-2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from tokentrim_server.hooks import SessionHook, create_hook
from tokentrim_server.policies import (
    AcceptedChunk,
    CacheHandle,
    CachePolicy,
    Candidate,
    Decision,
    SessionInfo,
    Stage,
    create_policy,
    latent_summary,
)

PIPELINES: tuple[str, ...] = ("self_forcing", "rolling_forcing")
CONTROL = "none"


def token_drift(candidate: Candidate) -> torch.Tensor | None:
    """TokenTrim's per-token drift ``||Z_t(i) - Z_{t-1}(i)||_2`` of a candidate ``[N]`` (``None`` without a previous
    accepted summary), for lab policies and recorders that need it beside the inner policy's verdict."""
    if candidate.previous is None:
        return None
    return torch.linalg.vector_norm(candidate.summary.float() - candidate.previous.float(), dim=1)


class ForwardingPolicy(CachePolicy):
    """A lab policy around another policy instance: stage, budget, verdicts and statistics forwarded to ``inner``.

    Subclasses change one thing (a verdict in :meth:`inspect`, or what is recorded of it).
    """

    def __init__(self, inner: CachePolicy) -> None:
        self.inner = inner  # first: a subclass may name itself after it
        super().__init__()

    @property
    def stage(self) -> Stage | None:
        return self.inner.stage

    @property
    def max_regenerations(self) -> int:
        return self.inner.max_regenerations

    def start(self, session: SessionInfo) -> None:
        self.inner.start(session)

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        return self.inner.inspect(candidate, cache)

    def accepted(self, chunk: AcceptedChunk) -> None:
        self.inner.accepted(chunk)

    def end(self) -> None:
        self.inner.end()


class WrappedTokenTrim(ForwardingPolicy):
    """A lab policy around a registry-built ``tokentrim`` policy: its stage, budget and statistics, forwarded.

    Subclasses change the verdict in :meth:`inspect`; the inner policy's ``accepted`` records the accepted
    candidate's severity, so the statistics evolve as TokenTrim's would on the same accepted chunks.
    """

    def __init__(self, tokentrim_params: Mapping[str, Any] | None = None) -> None:
        super().__init__(create_policy("tokentrim", tokentrim_params))


class RegeneratePolicy(WrappedTokenTrim):
    name = "regenerate"
    description = "Control: TokenTrim's trigger rule, regenerating without pruning (the video equals none's)."

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        found = self.inner.inspect(candidate, cache)
        return Decision(found.triggered, None, found.severity, found.threshold)


class AlwaysTrimPolicy(WrappedTokenTrim):
    name = "always_trim"
    description = "Control: prune TokenTrim's top-p drift positions at every chunk after the first, regenerate once."

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        found = self.inner.inspect(candidate, cache)
        return Decision(candidate.previous is not None, found.positions, found.severity, found.threshold)


class OraclePolicy(WrappedTokenTrim):
    """TokenTrim's detector pointed at the truth: the candidate is compared with the true chunk's latents.

    ``truth`` is the normalised latent video ``[B, F, C, H, W]`` of the ground truth from frame 0 (as
    ``drift_lab.latents.encode_frames`` gives it), covering every chunk the session will inspect.
    """

    name = "oracle"
    description = "Upper bound: trigger and prune where the candidate's latents are far from the true chunk's."

    def __init__(self, truth: torch.Tensor, tokentrim_params: Mapping[str, Any] | None = None) -> None:
        super().__init__(tokentrim_params)
        if truth.dim() != 5:
            raise ValueError(f"truth must be latents [B, F, C, H, W]; got shape {list(truth.shape)}")
        self.truth = truth
        self.patch_size: tuple[int, int, int] | None = None

    def start(self, session: SessionInfo) -> None:
        super().start(session)
        self.patch_size = session.patch_size

    def inspect(self, candidate: Candidate, cache: CacheHandle) -> Decision:
        if self.patch_size is None:
            raise RuntimeError("OraclePolicy.inspect before start")
        # The inner policy's "previous chunk" becomes the true chunk: its drift is then the error vs the truth.
        truth = latent_summary(self.true_chunk(candidate), self.patch_size)
        return self.inner.inspect(dataclasses.replace(candidate, previous=truth), cache)

    def true_chunk(self, candidate: Candidate) -> torch.Tensor:
        """The truth's latents at the candidate's frames, shaped like the candidate."""
        frames = candidate.latents.shape[1]
        end = candidate.frame_start + frames
        if end > self.truth.shape[1]:
            raise ValueError(f"truth holds {self.truth.shape[1]} latent frames; chunk {candidate.chunk} needs {end}")
        truth = self.truth[:, candidate.frame_start : end]
        if truth.shape[0] != candidate.latents.shape[0] or truth.shape[2:] != candidate.latents.shape[2:]:
            raise ValueError(
                f"truth latents {list(self.truth.shape)} do not match the candidate's {list(candidate.latents.shape)}"
            )
        return truth.to(device=candidate.latents.device, dtype=torch.float32)


PolicyFactory = Callable[[torch.Tensor | None], CachePolicy]
HookSpec = tuple[str, Mapping[str, Any]]  # a session hook's registry name and parameters
FLOWMO: tuple[HookSpec, ...] = (("flowmo", {}),)
# FlowMo at every step on the x0 prediction, lr 1e-2: the setting that measurably lowers the emitted first
# chunk's motion variance on the lab models, where the defaults do not (benchmarks/RESULTS.md).
FLOWMO_X0: tuple[HookSpec, ...] = (("flowmo", {"threshold": 0.0, "prediction": "x0", "lr": 0.01}),)


@dataclass(frozen=True)
class Arm:
    """One arm: a name (unique within its pipeline), the pipeline, and a factory of fresh policies.

    ``factory`` receives the truth latents (``None`` unless ``needs_truth``). ``same_as`` names an arm of the
    same pipeline that runs the identical policy and hooks (an ablation point that is the default), so an
    evaluation can run it once and report it under both names. ``hooks`` are the session hooks of a rollout.
    """

    name: str
    pipeline: str
    description: str
    factory: PolicyFactory
    needs_truth: bool = False
    same_as: str | None = None
    # The true-cache counterfactual: the control's policy, with the cache rewritten from the true chunks at the
    # control's drift onset (``drift_lab.experiment``); its rollout depends on the control's, so it runs after it.
    counterfactual: bool = False
    hooks: tuple[HookSpec, ...] = ()

    def create_policy(self, truth: torch.Tensor | None = None) -> CachePolicy:
        """A fresh policy for one rollout."""
        if self.needs_truth and truth is None:
            raise ValueError(f"arm {self.name!r} needs the truth latents (truth=None)")
        return self.factory(truth)

    def create_hooks(self) -> list[SessionHook]:
        """Fresh session hooks for one rollout (a hook keeps per-session state)."""
        return [create_hook(name, params) for name, params in self.hooks]

    @property
    def key(self) -> str:
        return f"{self.pipeline}/{self.name}"


def _registry(name: str, **params: Any) -> PolicyFactory:
    return lambda truth: create_policy(name, params)


def _arm_table() -> tuple[Arm, ...]:
    sf, rf = PIPELINES
    final = {"candidate": "final"}
    return (
        Arm(CONTROL, sf, "plain pipeline: nothing inspected or pruned", _registry("none")),
        Arm("tokentrim", sf, "TokenTrim, p = 0.1, first-step candidate", _registry("tokentrim")),
        Arm("tokentrim_final", sf, "TokenTrim, p = 0.1, final candidate", _registry("tokentrim", **final)),
        Arm("random", sf, "same trigger and budget, random positions", _registry("random")),
        Arm("regenerate", sf, "same trigger, regenerate without pruning", lambda truth: RegeneratePolicy()),
        Arm("always_trim", sf, "prune top-p drift positions at every chunk", lambda truth: AlwaysTrimPolicy()),
        Arm("oracle", sf, "trigger and prune by error vs the true chunk", lambda truth: OraclePolicy(truth), True),
        Arm("tokentrim_p05", sf, "TokenTrim, p = 0.05", _registry("tokentrim", prune_ratio=0.05)),
        Arm("tokentrim_p10", sf, "TokenTrim, p = 0.10 (= tokentrim)", _registry("tokentrim", prune_ratio=0.1),
            same_as="tokentrim"),
        Arm("tokentrim_p20", sf, "TokenTrim, p = 0.20", _registry("tokentrim", prune_ratio=0.2)),
        Arm("flowmo", sf, "FlowMo (defaults) on the first generated chunk", _registry("none"), hooks=FLOWMO),
        Arm("flowmo_x0", sf, "FlowMo at every step on the x0 prediction, lr 1e-2", _registry("none"),
            hooks=FLOWMO_X0),
        Arm("tokentrim_flowmo", sf, "TokenTrim + FlowMo: the paper's full method", _registry("tokentrim"),
            hooks=FLOWMO),
        Arm("true_cache", sf, "counterfactual: cache rewritten from the true chunks at the drift onset",
            _registry("none"), True, counterfactual=True),
        Arm(CONTROL, rf, "plain pipeline: nothing inspected or pruned", _registry("none")),
        Arm("tokentrim_final", rf, "TokenTrim, p = 0.1, final candidate", _registry("tokentrim", **final)),
        Arm("random_final", rf, "same trigger and budget, random positions", _registry("random", **final)),
        Arm("regenerate_final", rf, "same trigger, regenerate without pruning", lambda truth: RegeneratePolicy(final)),
        Arm("always_trim_final", rf, "prune top-p drift positions at every chunk",
            lambda truth: AlwaysTrimPolicy(final)),
        Arm("oracle_final", rf, "trigger and prune by error vs the true chunk",
            lambda truth: OraclePolicy(truth, final), True),
        Arm("flowmo", rf, "FlowMo (defaults) on the first generated chunk", _registry("none"), hooks=FLOWMO),
        Arm("flowmo_x0", rf, "FlowMo at every step on the x0 prediction, lr 1e-2", _registry("none"),
            hooks=FLOWMO_X0),
        Arm("tokentrim_final_flowmo", rf, "TokenTrim (final) + FlowMo: the paper's full method",
            _registry("tokentrim", **final), hooks=FLOWMO),
        Arm("true_cache", rf, "counterfactual: cache rewritten from the true chunks at the drift onset",
            _registry("none"), True, counterfactual=True),
    )  # fmt: skip


ARMS: tuple[Arm, ...] = _arm_table()
# Arms whose video must equal the control's exactly (same noise, same cache: only wall time differs).
REGENERATE_ONLY: frozenset[str] = frozenset({"regenerate", "regenerate_final"})


def arm_names(pipeline: str) -> list[str]:
    """Names of ``pipeline``'s arms, control first, in table order."""
    _check_pipeline(pipeline)
    return [arm.name for arm in ARMS if arm.pipeline == pipeline]


def get_arm(pipeline: str, name: str) -> Arm:
    """The arm ``name`` of ``pipeline`` (ValueError listing the known names otherwise)."""
    for arm in ARMS:
        if arm.pipeline == pipeline and arm.name == name:
            return arm
    _check_pipeline(pipeline)
    raise ValueError(f"arm must be one of {', '.join(arm_names(pipeline))} for {pipeline}; got {name!r}")


def _check_pipeline(pipeline: str) -> None:
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {', '.join(PIPELINES)}; got {pipeline!r}")
