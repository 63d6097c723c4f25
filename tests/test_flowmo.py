"""FlowMo as a session hook: its loss, its gradient, its Adam step and what it changes in a video."""

from __future__ import annotations

import pytest
import torch
from policy_support import LATENT_SHAPE, prompt, rolling_stream, self_forcing_stream, tiny_model

from tokentrim_server.engine import open_runner
from tokentrim_server.hooks import DenoisingStep, create_hook, hook_names, load_hook
from tokentrim_server.models.causal_wan import CausalWanTransformer
from tokentrim_server.pipelines.noise import SeededNoise
from tokentrim_server.pipelines.registry import build_pipeline
from tokentrim_server.policies import ParameterError, create_policy

flowmo_plugin = pytest.importorskip("flowmo_plugin", reason="install plugins/flowmo (make install)")
FlowMoHook = flowmo_plugin.FlowMoHook
motion_variance = flowmo_plugin.motion_variance


@pytest.fixture(scope="module")
def model() -> CausalWanTransformer:
    return tiny_model()


STREAMS = {"self_forcing": self_forcing_stream, "rolling_forcing": rolling_stream}


def _run(
    model, blocks: int = 3, seed: int = 3, hooks=(), pipeline: str = "self_forcing", **options
) -> tuple[list[torch.Tensor], list]:
    runner = open_runner(STREAMS[pipeline](model, blocks, seed, **options), create_policy("none"), hooks=hooks)
    results = list(runner)
    runner.close()
    return [r.chunk.latents for r in results], [r.report for r in results]


class Probe(FlowMoHook):
    """FlowMo that also keeps what it was shown, and runs ``check`` on each optimised step while the cache is live."""

    def __init__(self, params=None, check=None) -> None:
        super().__init__(params)
        self.check = check
        self.shown: list[tuple[DenoisingStep, torch.Tensor | None]] = []

    def adjust(self, step):
        if self.check is not None and self.selects(step):
            self.check(self, step)
        adjusted = super().adjust(step)
        self.shown.append((step, adjusted))
        return adjusted


# ---------------------------------------------------------------------------------------- the loss
def test_motion_variance_by_hand() -> None:
    prediction = torch.zeros(1, 4, 2, 1, 2)
    # Pixel 0: frames 0, 1, 3, 6 in both channels -> distances 1, 2, 3 -> population variance 2/3.
    prediction[0, :, :, 0, 0] = torch.tensor([0.0, 1.0, 3.0, 6.0])[:, None]
    # Pixel 1: distances 1, 1, 1 in channel 0 (variance 0), 0, 0, 3 in channel 1 (variance 2) -> mean 1.
    prediction[0, :, 0, 0, 1] = torch.tensor([0.0, 1.0, 2.0, 3.0])
    prediction[0, :, 1, 0, 1] = torch.tensor([0.0, 0.0, 0.0, 3.0])
    torch.testing.assert_close(motion_variance(prediction), torch.tensor([1.0]))
    torch.testing.assert_close(motion_variance(prediction[:, :3]), torch.tensor([0.25]))  # pixel 0: 1, 2
    assert motion_variance(torch.randn(2, 2, 3, 4, 4)).eq(0).all()  # one distance has no variance


# ---------------------------------------------------------------------------------------- the gradient
@pytest.mark.parametrize("pipeline", ["self_forcing", "rolling_forcing"])
def test_the_gradient_matches_finite_differences(pipeline) -> None:
    """Central differences of the loss along random directions and along the gradient itself (float64 model).

    Rolling Forcing's default threshold selects block 0's first two steps: the second is taken in a window
    that also holds block 1, which the gradient must treat as held."""
    results = []

    def check(hook: FlowMoHook, step: DenoisingStep) -> None:
        latent = step.noisy.detach()
        _, gradient = hook.loss_and_gradient(step, latent)
        assert gradient.dtype == torch.float64
        generator = torch.Generator().manual_seed(0)
        directions = [torch.randn(latent.shape, generator=generator, dtype=latent.dtype) for _ in range(4)]
        directions.append(gradient / gradient.norm())  # a unit step: a longer one moves the max to another pixel
        eps = 1e-3
        for direction in directions:
            with torch.no_grad():
                plus = hook.loss(step, latent + eps * direction).sum()
                minus = hook.loss(step, latent - eps * direction).sum()
            scale = float(gradient.norm() * direction.norm())
            results.append((float((plus - minus) / (2 * eps)), float((gradient * direction).sum()), scale))

    hook = Probe(check=check)
    _run(tiny_model().double(), 2, hooks=[hook], pipeline=pipeline)
    optimised = [step.step for step, adjusted in hook.shown if adjusted is not None]
    assert optimised == ([0] if pipeline == "self_forcing" else [0, 1])
    assert len(results) == 5 * len(optimised)
    for index, (numeric, analytic, scale) in enumerate(results):
        if index % 5 == 4:  # along the gradient the slope is |g| (measured: 1.4e-4 relative)
            assert numeric == pytest.approx(scale, rel=1e-3)
        else:  # measured: |numeric - analytic| <= 1.4e-6 |g| |d| (float32 casts inside the model limit it)
            assert abs(numeric - analytic) <= 2e-5 * scale, (numeric, analytic)


def test_one_iteration_is_one_adam_step_with_that_gradient(model) -> None:
    expected = []

    def check(hook: FlowMoHook, step: DenoisingStep) -> None:
        _, gradient = hook.loss_and_gradient(step, step.noisy)
        # Adam's first step: m/(1-b1) = g, v/(1-b2) = g^2, so the update is lr * g / (|g| + eps).
        expected.append(step.noisy - 1e-3 * gradient / (gradient.abs() + 1e-8))

    hook = Probe(check=check)
    _run(model, 1, hooks=[hook])
    (step, adjusted), *later = hook.shown
    assert step.step == 0 and all(a is None for _, a in later)  # only Self Forcing's first step (t >= 946)
    torch.testing.assert_close(adjusted, expected[0], rtol=0, atol=1e-6)
    assert (adjusted - step.noisy).abs().max() <= 1e-3 + 1e-6


def test_the_loss_falls_after_the_hooks_step(model) -> None:
    measured = []

    def check(hook: FlowMoHook, step: DenoisingStep) -> None:
        latent, _ = hook.optimise(step)
        with torch.no_grad():
            measured.append((float(hook.loss(step, step.noisy)), float(hook.loss(step, latent))))

    _, reports = _run(model, 1, hooks=[Probe(check=check)])
    values = reports[0].hooks[0].values
    assert values["steps"] == 1 and values["skipped_iterations"] == 0
    assert values["loss_after"] < values["loss_before"]
    ((before, after),) = measured
    assert (before, after) == pytest.approx((values["loss_before"], values["loss_after"]), rel=1e-5)
    # More iterations keep lowering it on this seed.
    _, reports = _run(model, 1, hooks=[FlowMoHook({"iterations": 3})])
    assert reports[0].hooks[0].values["loss_after"] < values["loss_after"]


# ---------------------------------------------------------------------------------------- the video
def test_only_the_first_chunk_is_touched_and_the_seed_reproduces_the_video(model) -> None:
    plain, _ = _run(model)
    hooked, reports = _run(model, hooks=[create_hook("flowmo")])
    again, _ = _run(model, hooks=[create_hook("flowmo")])
    assert all(torch.equal(a, b) for a, b in zip(hooked, again, strict=True))
    assert not torch.equal(hooked[0], plain[0])
    assert reports[0].hooks[0].name == "flowmo" and reports[0].hooks[0].seconds > 0
    assert [r.hooks for r in reports[1:]] == [(), ()]

    # Later chunks differ from the plain run only through the first chunk they attend to: the plain pipeline
    # continued from FlowMo's first chunk gives them bit for bit.
    stream = self_forcing_stream(model, 3)
    stream.prepare_block()
    stream.commit(hooked[0])
    assert all(torch.equal(chunk.latents, h) for chunk, h in zip(stream, hooked[1:], strict=True))

    other_seed, _ = _run(model, seed=4, hooks=[create_hook("flowmo")])
    assert not torch.equal(other_seed[0], hooked[0])


def test_on_rolling_forcing_the_first_block_is_optimised_and_the_seed_reproduces_the_video(model) -> None:
    plain, _ = _run(model, pipeline="rolling_forcing")
    hooked, reports = _run(model, hooks=[create_hook("flowmo")], pipeline="rolling_forcing")
    again, _ = _run(model, hooks=[create_hook("flowmo")], pipeline="rolling_forcing")
    assert all(torch.equal(a, b) for a, b in zip(hooked, again, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(hooked, plain, strict=True))  # blocks 1, 2 attend to block 0
    values = reports[0].hooks[0].values
    assert values["steps"] == 2  # warped steps 1000, 952.4 of 5 are >= 946
    assert values["loss_after"] < values["loss_before"]
    assert [r.hooks for r in reports[1:]] == [(), ()]


@pytest.mark.parametrize(
    ("params", "optimised"),
    [({}, [0]), ({"threshold": 900.0}, [0, 1]), ({"steps": 3}, [0, 1, 2]), ({"threshold": 0.0}, [0, 1, 2, 3])],
)
def test_which_steps_are_optimised(model, params, optimised) -> None:
    hook = Probe(params)
    _, reports = _run(model, 1, hooks=[hook])
    assert [step.step for step, adjusted in hook.shown if adjusted is not None] == optimised
    assert reports[0].hooks[0].values["steps"] == len(optimised)


def test_options_change_what_is_optimised_but_not_how(model) -> None:
    base, _ = _run(model, 1, hooks=[FlowMoHook()])
    checkpointed, reports = _run(model, 1, hooks=[FlowMoHook({"gradient_checkpointing": True})])
    torch.testing.assert_close(checkpointed[0], base[0], rtol=0, atol=1e-6)
    assert not torch.equal(_run(model, 1, hooks=[FlowMoHook({"prediction": "x0"})])[0][0], base[0])
    _, quiet = _run(model, 1, hooks=[FlowMoHook({"report_loss_after": False})])
    assert "loss_after" in reports[0].hooks[0].values and "loss_after" not in quiet[0].hooks[0].values


# ---------------------------------------------------------------------------------------- refusals
def test_flowmo_is_registered_and_validates_its_parameters() -> None:
    assert "flowmo" in hook_names()
    assert load_hook("flowmo") is FlowMoHook
    assert create_hook("flowmo").params == {
        "threshold": 946.0, "steps": 0, "lr": 1e-3, "iterations": 1, "prediction": "velocity",
        "gradient_checkpointing": False, "report_loss_after": True,
    }
    for params, message in [
        ({"lr": 0}, r"parameter 'lr' must be in \(0, inf\); got 0"),
        ({"iterations": 0}, r"parameter 'iterations' must be in \[1, 100\]; got 0"),
        ({"prediction": "noise"}, r"parameter 'prediction' must be one of velocity, x0; got 'noise'"),
        ({"threshold": 1200}, r"parameter 'threshold' must be in \[0, 1000\]; got 1200"),
        ({"gradient_checkpointing": 1}, r"parameter 'gradient_checkpointing' must be a bool"),
        ({"lr_": 0.1}, r"session hook 'flowmo' has no parameter 'lr_'; it accepts: threshold, steps, lr"),
    ]:
        with pytest.raises(ParameterError, match=message):
            create_hook("flowmo", params)


def test_flowmo_serves_longlive_sessions(model) -> None:
    stream = build_pipeline("longlive", model).open(prompt(), LATENT_SHAPE, SeededNoise(3), 2)
    open_runner(stream, create_policy("none"), hooks=[create_hook("flowmo")]).close()


@pytest.mark.parametrize("pipeline", sorted(STREAMS))
def test_flowmo_refuses_blocks_too_short_for_a_variance(model, pipeline) -> None:
    with pytest.raises(ValueError, match=r"at least 3 latent frames per block.*frames_per_block=2"):
        open_runner(STREAMS[pipeline](model, 2, frames_per_block=2), create_policy("none"),
                    hooks=[create_hook("flowmo")])
