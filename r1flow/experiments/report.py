"""The findings report: what each arm measured, per seed, turned into the paper's five claims.

Arms (all from one base per seed; ``flows.experiments`` runs them):

- ``zero``: GRPO from the base with accuracy + format rewards (R1-Zero, paper §2.2);
- ``language``: the same plus the language-consistency reward (§2.3.2);
- ``cold``: cold-start SFT (§2.3.1), then GRPO with ``zero``'s rewards and settings; the starting
  point differs and so does the template — the R1 one its cold-start data is written in, whose
  format rule (``<think>`` … summary with a boxed answer) is not R1-Zero's (``<answer>`` tags), as
  in the paper;
- ``distill``: the student SFT'd on rejection-sampled data of ``cold``'s model (§2.4);
- ``student_rl``: the same student trained by GRPO until it has spent ``distill``'s FLOPs (Table 6).

Each arm is a history of held-out evaluations (``eval/arith_heldout/<metric>`` by step) and the
run's final metrics; everything here is a pure function of those numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1flow.experiments.claims import Verdict, beats, costs_at_most, cuts, mean_std, sooner, steps_to
from r1flow.experiments.config import FindingsConfig
from r1flow.flops import comparable

BENCH = "arith_heldout"
METRICS = ("pass_at_1", "format_rate", "mixed_language_rate", "mean_length")


def eval_key(metric: str) -> str:
    return f"eval/{BENCH}/{metric}"


@dataclass(frozen=True)
class Arm:
    """One arm's run for one seed: stepped metrics and the run's final (latest) metrics."""

    history: list[tuple[int, dict[str, float]]]
    final: dict[str, float]

    def curve(self, metric: str) -> list[tuple[int, float]]:
        return [(step, m[eval_key(metric)]) for step, m in self.history if eval_key(metric) in m]

    def start(self, metric: str) -> float:
        return self.curve(metric)[0][1]

    def end(self, metric: str) -> float:
        return self.final[eval_key(metric)]

    @property
    def flops(self) -> float:
        return self.final["train_flops"]


Seeds = dict[int, dict[str, Arm]]
"""``{seed: {arm name: Arm}}``."""


def verdicts(spec: FindingsConfig, arms: Seeds, k: int, horizon: int) -> list[Verdict]:
    """The five claims over the seeds (``horizon``: the steps of the ``zero`` and ``cold`` arms)."""
    t = spec.thresholds

    def of(arm: str, which: str, metric: str) -> list[float]:
        return [getattr(by_arm[arm], which)(metric) for by_arm in arms.values()]

    def reach(arm: str) -> list[int | None]:
        return [steps_to(by_arm[arm].curve("pass_at_1"), t.cold_start_target) for by_arm in arms.values()]

    distill = beats("5. the distilled student beats the same student trained by GRPO at comparable compute "
                    "(Table 6)", of("distill", "end", "pass_at_1"), of("student_rl", "end", "pass_at_1"),
                    t.distill_gain)
    ratios = [by_arm["student_rl"].flops / by_arm["distill"].flops for by_arm in arms.values()]
    if not all(comparable(r, 1.0, spec.compute_tolerance) for r in ratios):
        distill = Verdict(distill.claim, False, distill.gain, distill.detail + "; compute NOT within "
                          f"±{spec.compute_tolerance:.0%} (RL/distill FLOPs {', '.join(f'{r:.2f}' for r in ratios)})")
    return [
        beats("1. R1-Zero: RL from the base alone raises held-out pass@1 (Table 2, Figure 2)",
              of("zero", "end", "pass_at_1"), of("zero", "start", "pass_at_1"), t.r1_zero_gain),
        beats(f"2. majority voting: cons@{k} ≥ pass@1 (the R1-Zero models)",
              of("zero", "end", f"cons_at_{k}"), of("zero", "end", "pass_at_1"), t.cons_over_pass),
        sooner(f"3a. cold start (§2.3.1): RL reaches held-out pass@1 {t.cold_start_target:g} in fewer steps "
               "than RL from the base", reach("cold"), reach("zero"), horizon),
        beats("3b. cold start: better-formed answers (held-out format rate at the end)",
              of("cold", "end", "format_rate"), of("zero", "end", "format_rate"), 0.0, strict=True),
        cuts("4a. language consistency (§2.3.2): the reward cuts the mixed-language CoT rate",
             of("language", "end", "mixed_language_rate"), of("zero", "end", "mixed_language_rate"),
             t.language_mixing_cut),
        costs_at_most("4b. language consistency: at a small cost in held-out pass@1",
                      of("language", "end", "pass_at_1"), of("zero", "end", "pass_at_1"), t.language_max_cost),
        distill,
    ]


ROWS = (("base model (R1-Zero step 0)", "zero", "start"), ("R1-Zero (GRPO from the base)", "zero", "end"),
        ("R1-Zero + language reward", "language", "end"), ("cold-start SFT (step 0 of its RL)", "cold", "start"),
        ("cold start + GRPO", "cold", "end"), ("student base (step 0 of its RL)", "student_rl", "start"),
        ("student + GRPO, distillation's FLOPs", "student_rl", "end"), ("student distilled", "distill", "end"))


def table(arms: Seeds, k: int) -> list[str]:
    """Markdown rows: mean ± std over seeds of each arm's held-out metrics (and training FLOPs)."""
    def cell(arm: str, which: str, metric: str) -> str:
        values = [getattr(by_arm[arm], which)(metric) for by_arm in arms.values()]
        mean, std = mean_std(values)
        return f"{mean:.1f} ± {std:.1f}" if metric == "mean_length" else f"{mean:.3f} ± {std:.3f}"

    def flops(arm: str, which: str) -> str:
        if which != "end" or arm not in ("distill", "student_rl"):
            return ""
        mean, std = mean_std([by_arm[arm].flops for by_arm in arms.values()])
        return f"{mean:.2e} ± {std:.1e}"

    columns = ("pass_at_1", f"cons_at_{k}", "format_rate", "mixed_language_rate", "mean_length")
    lines = ["| held-out, mean ± std over seeds | pass@1 | cons@" + str(k) + " | format rate | mixed-language "
             "CoT | length (tokens) | training FLOPs |", "|---|---|---|---|---|---|---|"]
    for label, arm, which in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(arm, which, m) for m in columns) + f" | {flops(arm, which)} |")
    return lines


def render(spec: FindingsConfig, preset: str, arms: Seeds, found: list[Verdict], k: int, horizon: int,
           quick: bool, plots: list[str]) -> str:
    """``report.md``: setup, the table, the verdicts, the curves."""
    t = spec.thresholds
    held = sum(v.holds for v in found)
    problems = int(next(iter(arms.values()))["zero"].end("num_problems"))
    lines = [f"# DeepSeek-R1 findings at tiny scale ({preset} preset, seeds {spec.seeds})", ""]
    if quick:
        lines += ["**--quick run: the micro preset checks the flow, its verdicts say nothing about the paper.**", ""]
    lines += [f"Every arm starts from one base per seed, pretrained on the synthetic arithmetic corpus with "
              f"{spec.mixed_language:.0%} of its worked chains code-switching between English and Chinese "
              "words (so that a CoT can mix languages). R1-Zero, R1-Zero + language reward and cold start + "
              f"GRPO run the same GRPO settings for {horizon} steps (cold start in the R1 template of its SFT "
              f"data, each format rate by its own template's rule); held-out: {problems} problems × {k} samples. "
              "Seeds, thresholds and the compute rule were fixed in `configs/experiments/findings.yaml` "
              "before the runs.", "", *table(arms, k), "", f"## Verdicts ({held} of {len(found)} reproduced)", ""]
    lines += [f"- {v.line()}" for v in found]
    steps = {arm: [steps_to(by_arm[arm].curve("pass_at_1"), t.cold_start_target) for by_arm in arms.values()]
             for arm in ("zero", "cold")}
    lines += ["", f"Steps to held-out pass@1 {t.cold_start_target:g} per seed (None: not within {horizon}): "
              f"from the base {steps['zero']}, after cold start {steps['cold']}.",
              "", "Regenerate: `r1flow findings" + (" --quick" if quick else "") + "`.", ""]
    lines += [f"![{name}]({name})" for name in plots]
    return "\n".join(lines) + "\n"
