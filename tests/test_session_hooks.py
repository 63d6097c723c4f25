"""Session hooks: discovery through entry points, typed parameters, and the engine's first-chunk protocol."""

from __future__ import annotations

import json

import pytest
import torch
from policy_support import LATENT_SHAPE, installed_distribution, rolling_stream, self_forcing_stream, tiny_model

from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import (
    ENTRY_POINT_GROUP,
    DenoisingStep,
    HookNotFoundError,
    HookReport,
    SessionHook,
    create_hook,
    describe_hooks,
    hook_names,
)
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.base import Chunk
from tokentrim_server.pipelines.schedule import to_x0
from tokentrim_server.policies import CachePolicy, Parameter, ParameterError, create_policy


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    return tiny_model()


def _video(runner) -> tuple[torch.Tensor, list]:
    results = list(runner)
    runner.close()
    return torch.cat([r.chunk.latents for r in results], dim=1), [r.report for r in results]


def _plain(model, blocks: int = 3, seed: int = 3) -> torch.Tensor:
    return torch.cat([chunk.latents for chunk in self_forcing_stream(model, blocks, seed)], dim=1)


class Recorder(SessionHook):
    """Takes part without changing anything; remembers what it was shown and when."""

    name = "recorder"
    parameters = (Parameter("shift", float, 0.0, "Added to the noisy latent of step 0."),)

    def __init__(self, params=None) -> None:
        super().__init__(params)
        self.calls: list[str] = []
        self.steps: list[DenoisingStep] = []

    def start(self, session) -> None:
        self.calls.append(f"start:{session.pipeline}")

    def adjust(self, step: DenoisingStep) -> torch.Tensor | None:
        self.steps.append(step)
        if step.step == 0 and self.params["shift"]:
            return step.noisy + self.params["shift"]
        return None

    def values(self) -> dict[str, float]:
        self.calls.append("values")
        return {"seen": len(self.steps)}

    def end(self) -> None:
        self.calls.append("end")


# ---------------------------------------------------------------------------------------- the engine
def test_a_hook_that_changes_nothing_leaves_the_video_bit_identical(model) -> None:
    hook = Recorder()
    latents, reports = _video(open_runner(self_forcing_stream(model, 3), create_policy("none"), hooks=[hook]))
    assert torch.equal(latents, _plain(model))
    # Every step of the first chunk, and nothing after it.
    assert [(s.chunk, s.step) for s in hook.steps] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert [round(s.timestep, 3) for s in hook.steps] == [1000.0, 937.5, 833.333, 625.0]
    assert hook.calls == ["start:self_forcing", "values", "end"]

    first = reports[0].hooks
    assert len(first) == 1 and isinstance(first[0], HookReport)
    assert first[0].name == "recorder" and first[0].values == {"seen": 4.0} and first[0].seconds >= 0
    assert all(r.hooks == () for r in reports[1:])
    encoded = json.loads(json.dumps(reports[0].as_dict()))
    assert encoded["hooks"] == [{"name": "recorder", "seconds": first[0].seconds, "values": {"seen": 4.0}}]
    assert json.loads(json.dumps(reports[1].as_dict()))["hooks"] == []


def test_rolling_forcing_offers_the_first_blocks_steps_each_in_its_window(model) -> None:
    """Block 0's five steps, one per window; ``predict`` is the window's call with the other blocks held."""
    checked = []

    class Checker(Recorder):
        def adjust(self, step):
            cache = stream.cache
            before = (cache.length, [t.clone() for t in cache.keys_values(0)] if cache.length else [])
            latent = step.noisy.clone().requires_grad_(True)
            predicted = step.predict(latent)
            (gradient,) = torch.autograd.grad(predicted.square().sum(), latent)
            torch.testing.assert_close(predicted.detach(), step.flow, rtol=0, atol=1e-5)
            assert predicted.shape == step.noisy.shape == (1, 3, *LATENT_SHAPE) and gradient.abs().sum() > 0
            after = (cache.length, list(cache.keys_values(0)) if cache.length else [])
            assert before[0] == after[0] and all(torch.equal(x, y) for x, y in zip(before[1], after[1], strict=True))
            checked.append(len(stream.window))
            return super().adjust(step)

    stream = rolling_stream(model, 3)
    hook = Checker()
    latents, reports = _video(open_runner(stream, create_policy("none"), hooks=[hook]))
    assert torch.equal(latents, torch.cat([chunk.latents for chunk in rolling_stream(model, 3)], dim=1))
    assert [(s.chunk, s.step) for s in hook.steps] == [(0, step) for step in range(5)]
    assert checked == [1, 2, 3, 3, 3]  # the window grows to the run's 3 blocks, block 0 always the oldest
    assert reports[0].hooks[0].values == {"seen": 5.0} and all(r.hooks == () for r in reports[1:])
    # Block 0's first windows run before its candidate's: the chunk's time still includes them, hooks and all.
    assert reports[0].chunk_seconds >= reports[0].hooks[0].seconds


def test_rolling_forcing_adjusts_the_oldest_blocks_update_only(model) -> None:
    """A latent returned at block 0's step 1 (window [block 0, block 1]) changes block 0's x0 by itself and
    leaves block 1's update as it was."""
    shift = 0.25
    plain, adjusted = rolling_stream(model, 2), rolling_stream(model, 2)
    plain.step_window(), plain.step_window()
    adjusted.step_window()
    adjusted.step_window(lambda step, noisy, flow, predict: noisy + shift if step == 1 else noisy)
    (first_plain, second_plain), (first, second) = plain.window, adjusted.window
    assert torch.equal(second.noisy, second_plain.noisy)
    sigma = adjusted.timesteps[2] / 1000.0  # block 0 is renoised to its step 2: x_t = (1 - sigma) x0 + sigma n
    expected = torch.full_like(first.noisy, (1 - sigma) * shift)
    torch.testing.assert_close(first.noisy - first_plain.noisy, expected, rtol=0, atol=1e-5)


def test_hooks_take_part_in_the_first_chunk_after_a_prefill(model) -> None:
    plain = [chunk.latents for chunk in self_forcing_stream(model, 3)]
    hook = Recorder()
    stream = self_forcing_stream(model, 3)
    stream.prefill([Chunk(0, 0, plain[0])])
    latents, reports = _video(open_runner(stream, create_policy("none"), hooks=[hook]))
    assert torch.equal(latents, torch.cat(plain[1:], dim=1))
    assert [(s.chunk, s.step) for s in hook.steps] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert reports[0].hooks[0].values == {"seen": 4.0} and reports[1].hooks == ()


def test_the_step_continues_with_the_prediction_made_before_the_adjustment(model) -> None:
    """x0 = x_t' - sigma v(x_t), FlowMo's order; later chunks run as usual from the adjusted first chunk."""
    shift = 0.25
    latents, _ = _video(
        open_runner(self_forcing_stream(model, 3), create_policy("none"), hooks=[Recorder({"shift": shift})])
    )
    stream = self_forcing_stream(model, 3)
    stream.prepare_block()
    noisy = stream.initial_noise(0)
    flow = stream.block_call(noisy, stream.timesteps[0])
    chunks = [stream.commit(stream.finish(to_x0(noisy + shift, flow, stream.timesteps[0]))).latents]
    chunks += [chunk.latents for chunk in stream]
    assert torch.equal(latents, torch.cat(chunks, dim=1))
    assert not torch.equal(latents[:, :3], _plain(model)[:, :3])


def test_the_differentiable_call_reads_the_cache_and_writes_nothing(model) -> None:
    stream = self_forcing_stream(model, 2)
    stream.next_chunk()  # block 0 committed: block 1 attends to it
    stream.prepare_block()
    noisy = stream.initial_noise(1)
    timestep = stream.timesteps[0]
    flow = stream.block_call(noisy, timestep)  # the plain call, leaving its K/V pending
    cache = stream.cache
    snapshot = [(k.clone(), v.clone()) for k, v in (cache.keys_values(layer) for layer in range(cache.num_layers))]
    length, pending = cache.length, cache._pending

    predict = stream.predictor(timestep)
    latent = noisy.clone().requires_grad_(True)
    differentiable = predict(latent)
    torch.testing.assert_close(differentiable, flow, rtol=0, atol=1e-5)
    (gradient,) = torch.autograd.grad(differentiable.square().sum(), latent)
    latent_again = noisy.clone().requires_grad_(True)
    checkpointed = predict(latent_again, gradient_checkpointing=True)
    (gradient_again,) = torch.autograd.grad(checkpointed.square().sum(), latent_again)

    assert gradient.abs().sum() > 0
    torch.testing.assert_close(gradient_again, gradient, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert (cache.length, cache._pending) == (length, pending)
    for layer, (k, v) in enumerate(snapshot):
        cached_k, cached_v = cache.keys_values(layer)
        assert torch.equal(cached_k, k) and torch.equal(cached_v, v)
        assert not (cached_k.requires_grad or cached_v.requires_grad)
    stream.close()


def test_a_differentiable_call_refuses_trainable_parameters() -> None:
    model = tiny_model()
    stream = self_forcing_stream(model, 1)
    model.base.proj_out.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="frozen model parameters"):
        stream.predictor(1000.0)(stream.initial_noise(0))


def test_a_pipeline_that_cannot_honour_hooks_refuses_them_by_its_reason(model, monkeypatch) -> None:
    stream = rolling_stream(model, 2)
    monkeypatch.setattr(type(stream), "hooks_refusal", "need a pipeline with steps of its own")
    with pytest.raises(ValueError, match=r"session hook\(s\) recorder need a pipeline with steps of its own"):
        open_runner(stream, create_policy("none"), hooks=[Recorder()])
    open_runner(rolling_stream(model, 2), create_policy("none")).close()  # no hooks: nothing to refuse


def test_runner_refusals(model) -> None:
    with pytest.raises(ValueError, match="given more than once"):
        open_runner(self_forcing_stream(model, 2), create_policy("none"), hooks=[Recorder(), Recorder()])
    with pytest.raises(TypeError, match="SessionHook instances"):
        open_runner(self_forcing_stream(model, 2), create_policy("none"), hooks=[object()])
    stream = self_forcing_stream(model, 2)
    stream.next_chunk()
    with pytest.raises(ValueError, match="already produced 1 chunk"):
        open_runner(stream, create_policy("none"), hooks=[Recorder()])


def test_a_refusing_hook_ends_the_hooks_already_started(model) -> None:
    class Refuses(Recorder):
        name = "refuses"

        def start(self, session) -> None:
            raise ValueError("not this session")

    first = Recorder()
    with pytest.raises(ValueError, match="not this session"):
        open_runner(self_forcing_stream(model, 1), create_policy("none"), hooks=[first, Refuses()])
    assert first.calls == ["start:self_forcing", "end"]


def test_a_hook_returning_the_wrong_shape_is_an_error(model) -> None:
    class Wrong(Recorder):
        def adjust(self, step):
            return step.noisy[:, :1]

    runner = open_runner(self_forcing_stream(model, 1), create_policy("none"), hooks=[Wrong()])
    with pytest.raises(ValueError, match=r"returned a latent of shape \(1, 1, 16, 8, 12\), expected"):
        next(runner)
    runner.close()


def test_hooks_take_part_again_when_a_policy_regenerates_the_first_chunk(model) -> None:
    class RegenerateFirst(CachePolicy):
        name = "regenerate_first"

        @property
        def stage(self):
            return "final"

        @property
        def max_regenerations(self):
            return 1

        def inspect(self, candidate, cache):
            from tokentrim_server.policies import Decision

            return Decision(candidate.chunk == 0 and candidate.attempt == 0, torch.tensor([], dtype=torch.long))

    hook = Recorder({"shift": 0.25})
    latents, reports = _video(open_runner(self_forcing_stream(model, 2), RegenerateFirst(), hooks=[hook]))
    assert reports[0].regenerations == 1
    assert [s.step for s in hook.steps] == [0, 1, 2, 3, 0, 1, 2, 3]
    reference, _ = _video(
        open_runner(self_forcing_stream(model, 2), create_policy("none"), hooks=[Recorder({"shift": 0.25})])
    )
    assert torch.equal(latents, reference)


# ---------------------------------------------------------------------------------------- the registry
HOOK_MODULE = "thirdparty_noise_nudge"
HOOK_SOURCE = '''
from tokentrim_server.hooks import SessionHook
from tokentrim_server.policies import Parameter


class NudgeHook(SessionHook):
    name = "nudge"
    description = "Test hook: scales the first step's noisy latent."
    parameters = (Parameter("scale", float, 1.0, "Factor.", minimum=0.5, maximum=2.0),)

    def adjust(self, step):
        return step.noisy * self.params["scale"] if step.step == 0 else None

    def values(self):
        return {"scale": self.params["scale"]}
'''


def test_a_third_party_hook_is_discovered_validated_and_driven(model, tmp_path, monkeypatch) -> None:
    assert ENTRY_POINT_GROUP == "tokentrim_server.session_hooks"
    assert "nudge" not in hook_names()
    entry = f"nudge = {HOOK_MODULE}:NudgeHook"
    with installed_distribution(tmp_path, monkeypatch, HOOK_MODULE, HOOK_SOURCE, ENTRY_POINT_GROUP, entry):
        assert "nudge" in hook_names()
        schema = next(s for s in describe_hooks() if s["name"] == "nudge")
        policy_schema = create_policy("none").schema()
        assert schema.keys() == policy_schema.keys()
        assert schema["parameters"][0]["allowed"] == "[0.5, 2]"
        json.dumps(describe_hooks())

        with pytest.raises(ParameterError, match=r"parameter 'scale' must be in \[0.5, 2\]; got 3"):
            create_hook("nudge", {"scale": 3})
        with pytest.raises(ParameterError, match="session hook 'nudge' has no parameter 'factor'; it accepts: scale"):
            create_hook("nudge", {"factor": 1.5})
        with pytest.raises(HookNotFoundError, match=r"no session hook 'nudg'; installed: .*nudge"):
            create_hook("nudg")

        hook = create_hook("nudge", {"scale": 1.5})
        assert type(hook).__module__ == HOOK_MODULE and hook.params == {"scale": 1.5}
        latents, reports = _video(open_runner(self_forcing_stream(model, 2), create_policy("none"), hooks=[hook]))
        assert reports[0].hooks[0].values == {"scale": 1.5} and not reports[1].hooks
        assert not torch.equal(latents, _plain(model, 2))
