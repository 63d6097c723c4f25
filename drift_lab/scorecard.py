"""``python -m drift_lab.scorecard``: score any cache policy on the injection and natural-drift suites.

For policy authors: one command runs the policy under test (any installed cache policy, by its registry name,
with parameters; or a lab policy such as ``tokentrim_adaptive``) beside ``none``, ``tokentrim`` and the oracles,
on the same scenes and noise, and prints one table:

* injection suite (Self Forcing, top dose): later divergence from the uncorrupted twin minus the plain
  pipeline's, for a coherent patch in the cache, a coherent patch in the emitted chunk, and noise in the cache
  (negative is better); and on uncorrupted runs the share of chunks that triggered and the divergence that cost;
* natural drift (each pipeline, rollouts to ``--horizon-multiple`` x the training clip): late-horizon object
  survival and PSNR minus the plain pipeline's (positive is better), and wall time relative to it;
* then the policy minus ``tokentrim`` on every column the two share, and on which it is detectably better or
  worse.

Every cell is a mean paired difference with its 95% bootstrap interval over scene seeds; ``*`` marks an
interval that excludes 0. ``--micro`` runs everything on a tiny untrained model in seconds (a smoke test of the
command, not evidence).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drift_lab.adaptive import AdaptiveBudgetPolicy
from drift_lab.analysis import arm_rows
from drift_lab.analysis import contrast as natural_contrast
from drift_lab.arms import CONTROL, PIPELINES, Arm
from drift_lab.experiment import ExperimentConfig, ExperimentResult, apply_threads, json_ready, run_experiment
from drift_lab.injection import Region
from drift_lab.injection_report import contrast
from drift_lab.injection_suite import ORACLE, InjectionConfig, InjectionResult, PolicyMaker, run_injection_suite, select
from drift_lab.model import micro_lab_folder
from drift_lab.statistics import Interval
from tokentrim_server.policies import CachePolicy, create_policy

# Lab policies the scorecard knows besides the installed ones (name -> class taking a params mapping).
LAB_POLICIES: dict[str, Callable[[Mapping[str, Any] | None], CachePolicy]] = {
    AdaptiveBudgetPolicy.name: AdaptiveBudgetPolicy,
}
INJECTION_SCENARIOS = ("cache_patch", "emitted_patch", "cache_noise")
BASELINES = (CONTROL, "tokentrim")
NATURAL_BASELINES = {"self_forcing": ("tokentrim", "oracle"), "rolling_forcing": ("tokentrim_final", "oracle_final")}


@dataclass(frozen=True)
class PolicyUnderTest:
    """The scored policy: its name, parameters, and the arm name it is reported under."""

    name: str
    params: Mapping[str, Any]

    @property
    def label(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ", ".join(f"{key}={value}" for key, value in sorted(self.params.items())) + ")"

    def create(self, params: Mapping[str, Any] | None = None) -> CachePolicy:
        merged = {**self.params, **(params or {})}
        if self.name in LAB_POLICIES:
            return LAB_POLICIES[self.name](merged)
        return create_policy(self.name, merged)

    def on_pipeline(self, pipeline: str) -> Mapping[str, Any] | None:
        """Parameters for ``pipeline``, or ``None`` when the policy cannot run there.

        Rolling Forcing offers only final candidates: a policy with a ``candidate`` parameter is switched to
        ``final`` there; one that inspects the first step without such a parameter is left out of that pipeline.
        """
        policy = self.create()
        if pipeline != "rolling_forcing" or policy.stage != "first_step":
            return {}
        try:
            self.create({"candidate": "final"})
        except (ValueError, TypeError):
            return None
        return {"candidate": "final"}


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings to a dict; values are read as JSON when they parse (numbers, booleans), else text."""
    params: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ValueError(f"--param must be KEY=VALUE; got {item!r}")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _injection(policy: PolicyUnderTest, models: Sequence[str], seeds: int, micro: bool) -> InjectionResult:
    config = InjectionConfig(
        models=tuple(models), seeds=seeds, scenarios=INJECTION_SCENARIOS, doses=(1.0,),
        arms=(*BASELINES, ORACLE), decode_seeds=0,
        **({"chunk": 3, "after": 2, "region": Region(0, 1, 1, 1)} if micro else {}),
    )  # fmt: skip
    maker: PolicyMaker = lambda injection, grid: policy.create()  # noqa: E731 - a one-line factory
    return run_injection_suite(config, {policy.label: maker}, progress=_progress)


def _natural(policy: PolicyUnderTest, models: Sequence[str], seeds: int, horizon: int) -> ExperimentResult:
    extra = []
    for pipeline in PIPELINES:
        params = policy.on_pipeline(pipeline)
        if params is not None:
            extra.append(Arm(policy.label, pipeline, f"policy under test: {policy.label}",
                             lambda truth, params=params: policy.create(params)))  # fmt: skip
    baselines = sorted({name for names in NATURAL_BASELINES.values() for name in names})
    config = ExperimentConfig(models=tuple(models), seeds=seeds, horizon_multiple=horizon, arms=tuple(baselines),
                              extra_arms=tuple(extra))  # fmt: skip
    return run_experiment(config, progress=_progress)


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cell(interval: Interval) -> str:
    if interval.n == 0 or not math.isfinite(interval.mean):
        return "n/a"
    star = "*" if interval.excludes_zero else ""
    return f"{interval.mean:+.3g}{star} [{interval.low:+.3g}, {interval.high:+.3g}]"


def table(policy: PolicyUnderTest, injection: InjectionResult, natural: ExperimentResult) -> list[str]:
    """The scorecard as markdown lines: one row per arm."""
    rows_by_pipeline = {p: {row.arm: row for row in arm_rows(natural.summaries, p)} for p in PIPELINES}
    header = ["arm", *(f"{s}: Δ later divergence" for s in INJECTION_SCENARIOS), "clean: triggered / Δ divergence"]
    for pipeline in PIPELINES:
        header += [f"{pipeline}: Δ late survival", f"{pipeline}: Δ late PSNR (dB)", f"{pipeline}: wall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    arms = [*BASELINES, ORACLE, "oracle (vs truth)", policy.label]
    for arm in arms:
        cells = [arm]
        for scenario in INJECTION_SCENARIOS:
            cells.append("" if arm in (CONTROL, "oracle (vs truth)") or not select(injection, scenario, arm)
                         else _cell(contrast(injection, scenario, arm, CONTROL)))  # fmt: skip
        clean = select(injection, "clean", arm)
        if clean and arm != CONTROL:
            flags = [flag for rollout in clean for flag in rollout.triggered]
            share = sum(flags) / len(flags)
            cells.append(f"{share:.1%} / {_cell(contrast(injection, 'clean', arm, CONTROL, 0.0))}")
        else:
            cells.append("")
        for pipeline in PIPELINES:
            name = _natural_arm(arm, pipeline)
            row = rows_by_pipeline[pipeline].get(name) if name else None
            if row is None or name == CONTROL:
                cells += ["", "", "1.00x" if name == CONTROL else ""]
                continue
            versus = row.versus_control
            cells += [_cell(versus["survival"]), _cell(versus["psnr"]), f"{row.wall_ratio:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def versus_tokentrim(
    policy: PolicyUnderTest, injection: InjectionResult, natural: ExperimentResult
) -> dict[str, Interval]:
    """The policy minus TokenTrim, paired by model and seed, per scorecard column the two share: what decides
    whether a policy does better than the one it would replace. Empty when the policy is ``tokentrim`` itself."""
    if policy.label == "tokentrim":
        return {}
    columns: dict[str, Interval] = {}
    for scenario in (*INJECTION_SCENARIOS, "clean"):
        if select(injection, scenario, policy.label) and select(injection, scenario, "tokentrim"):
            dose = 0.0 if scenario == "clean" else None
            columns[f"{scenario}: later divergence"] = contrast(injection, scenario, policy.label, "tokentrim", dose)
    for pipeline in PIPELINES:
        ours = natural.select(pipeline, policy.label)
        theirs = natural.select(pipeline, _natural_arm("tokentrim", pipeline) or "tokentrim")
        if ours and theirs:
            for metric, label in (("survival", "late survival"), ("psnr", "late PSNR (dB)")):
                columns[f"{pipeline}: {label}"] = natural_contrast(ours, theirs, metric)
    return columns


def versus_tokentrim_lines(policy: PolicyUnderTest, columns: Mapping[str, Interval]) -> list[str]:
    """The comparison with TokenTrim as markdown: a table of intervals, then the verdict in one sentence."""
    if not columns:
        return []
    better, worse = [], []
    for column, interval in columns.items():
        if interval.excludes_zero:
            lower_is_better = column.endswith("divergence")
            (better if (interval.mean < 0) == lower_is_better else worse).append(column)
    verdict = f"`{policy.label}` against `tokentrim`: "
    if not better and not worse:
        verdict += "no column differs detectably."
    else:
        verdict += "; ".join(
            f"{word} on {', '.join(names)}" for word, names in (("better", better), ("worse", worse)) if names
        ) + "."
    return [
        f"## `{policy.label}` minus `tokentrim` (paired by model and seed; `*`: the interval excludes 0)",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        "| " + " | ".join(_cell(interval) for interval in columns.values()) + " |",
        "",
        verdict,
    ]


def _natural_arm(arm: str, pipeline: str) -> str | None:
    """The natural-drift arm a scorecard row stands for on ``pipeline`` (``None``: not run there)."""
    tokentrim, oracle = NATURAL_BASELINES[pipeline]
    return {CONTROL: CONTROL, "tokentrim": tokentrim, "oracle (vs truth)": oracle, ORACLE: None}.get(arm, arm)


def render(policy: PolicyUnderTest, injection: InjectionResult, natural: ExperimentResult, command: str) -> str:
    config = natural.config
    return "\n".join([
        f"# Scorecard: `{policy.label}`",
        "",
        f"`{command}`",
        "",
        f"Injection suite: Self Forcing, dose 1, {injection.config.seeds} seeds per model; natural drift: "
        f"{config.seeds} seeds per model to {config.horizon_multiple}x the training clip, both pipelines. Cells: "
        "mean paired difference from `none` [95% bootstrap interval]; `*`: the interval excludes 0. Divergence: "
        "lower is better; survival and PSNR: higher is better. `injected_oracle` prunes exactly the injected "
        "positions; `oracle (vs truth)` prunes where the chunk is far from the true video.",
        "",
        *table(policy, injection, natural),
        "",
        *versus_tokentrim_lines(policy, versus_tokentrim(policy, injection, natural)),
        "",
        f"Wall time: injection {injection.seconds / 60:.1f} min, natural drift {natural.seconds / 60:.1f} min.",
        "",
    ])  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drift_lab.scorecard", description=__doc__.splitlines()[0])
    parser.add_argument("policy", help=f"an installed cache policy's name, or a lab policy ({', '.join(LAB_POLICIES)})")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="a parameter of the policy (repeatable; values read as JSON when they parse)")  # fmt: skip
    parser.add_argument("--models", nargs="+", default=[], help="lab model folders (required unless --micro)")
    parser.add_argument("--seeds", type=int, default=16, help="injection-suite seeds per model (default 16)")
    parser.add_argument("--natural-seeds", type=int, default=16, help="natural-drift seeds per model (default 16)")
    parser.add_argument("--horizon-multiple", type=int, default=8, help="natural-drift length in training clips (8)")
    parser.add_argument("--micro", action="store_true", help="a tiny untrained model, 2 seeds: checks the command")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    parser.add_argument("--out", default=None, help="also write the table as markdown here (JSON beside it)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    apply_threads(args.threads)
    try:
        policy = PolicyUnderTest(args.policy, parse_params(args.param))
        policy.create()  # an unknown policy or a bad parameter fails here, naming it
    except (ValueError, TypeError, LookupError) as error:
        raise SystemExit(f"error: {error}") from None
    command = shlex.join(["python", "-m", "drift_lab.scorecard", *argv])
    with tempfile.TemporaryDirectory() as scratch:
        models = args.models
        seeds, natural_seeds, horizon = args.seeds, args.natural_seeds, args.horizon_multiple
        if args.micro:
            models, seeds, natural_seeds, horizon = [str(micro_lab_folder(Path(scratch)))], 2, 2, 2
        if not models:
            raise SystemExit("error: --models must name at least one lab model folder (or use --micro)")
        injection = _injection(policy, models, seeds, args.micro)
        natural = _natural(policy, models, natural_seeds, horizon)
    markdown = render(policy, injection, natural, command)
    print(markdown)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(markdown)
        payload = {"command": command, "injection": injection.as_json(), "natural": natural.as_json()}
        out.with_suffix(".json").write_text(json.dumps(json_ready(payload)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
