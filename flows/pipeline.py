"""The DeepSeek-R1 recipe (arXiv 2501.12948, Figure 2 / §2.3) as one Prefect flow.

Each ``run.stage`` is a cached task that runs the stage as its own process and returns a
reference to what it published; evaluation happens inside every model-producing stage.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.models import record_evaluation, register_outputs, resolve_model
from flows.run import PipelineRun
from r1flow.config import resolve


@flow(name="r1-pipeline")
def pipeline(config: dict[str, Any], name: str = "r1", refresh: list[str] | None = None,
             allow_config_change: bool = False, resume: bool = False) -> dict:
    with PipelineRun(resolve(config), name, refresh, flow="r1-pipeline",
                     allow_config_change=allow_config_change, resume=resume) as run:
        base = run.stage("base")                                       # tiny presets: pretrain bases
        zero = run.stage("r1_zero", policy=base)                       # §2.2   R1-Zero: RL on the base
        cold = run.stage("cold_start", base=base, zero=zero)           # §2.3.1 curate long CoT, SFT base
        reasoner = run.stage("reasoning_rl", policy=cold)              # §2.3.2 reasoning-oriented RL
        data = run.stage("rejection_sampling", policy=reasoner)        # §2.3.3 rejection sampling + SFT data
        sft = run.stage("sft", base=base, data=data)                   # §2.3.3 SFT of the base, 2 epochs
        judge = run.stage("reward_model", base=base)                   # §2.3.4 reward model (helpfulness)
        final = run.stage("final_rl", policy=sft, reward_model=judge)  # §2.3.4 RL for all scenarios
        student = run.stage("distill", base=base, data=data)           # §2.4   distill the students
        register_outputs(run.config, run.runtime, name, final, student)  # registry: alias "candidate"
    return run.summary()


@flow(name="r1-zero")
def r1_zero(config: dict[str, Any], name: str = "r1-zero", refresh: list[str] | None = None,
            allow_config_change: bool = False, resume: bool = False) -> dict:
    with PipelineRun(resolve(config), name, refresh, flow="r1-zero", stages=("base", "r1_zero"),
                     allow_config_change=allow_config_change, resume=resume) as run:
        base = run.stage("base")
        run.stage("r1_zero", policy=base)                              # §2.2 RL from the base alone
    return run.summary()


@flow(name="r1-evaluation")
def evaluation(model: str, config: dict[str, Any], name: str = "r1-eval", refresh: bool = False) -> dict:
    """Evaluate one model (paper §3 metrics): ``models:/NAME@ALIAS`` (the nightly schedule: the
    registered candidate), ``run:NAME[/STAGE]`` or an artifact URI (``flows.models``)."""
    with PipelineRun(resolve(config), name, ["evaluation"] if refresh else None, flow="r1-evaluation",
                     stages=("evaluation",)) as run:
        target, version = resolve_model(model, run.config, run.runtime)
        result = run.stage("evaluation", model=target)
        if version is not None:
            record_evaluation(run.runtime, version, result)
    return run.summary()


@flow(name="r1-stage")
def stage(stage: str, config: dict[str, Any], inputs: dict[str, str], name: str = "r1-stage",
          refresh: bool = False, allow_config_change: bool = False, parent_run_id: str | None = None,
          expected: dict[str, str] | None = None, shard: list[int] | None = None) -> dict:
    """Run one stage on explicit inputs (artifact URIs): by hand, or as the flow run a pipeline
    launches on a GPU pool (``launch.kind: deployment``; it then logs under the pipeline's MLflow run
    and refuses at once if its cache key differs from ``expected``, the one the pipeline computed).
    ``shard=[i, N]``: only shard i of a generation stage (``launch.shards``), publishing nothing."""
    with PipelineRun(resolve(config), name, [stage] if refresh else None, flow="r1-stage", stages=(stage,),
                     allow_config_change=allow_config_change, parent_run_id=parent_run_id,
                     expected=expected) as run:
        store = run.runtime.store()
        refs = {k: store.ref(uri) for k, uri in inputs.items()}
        if shard:
            run.shard(stage, *shard, **refs)
        else:
            run.stage(stage, **refs)
    return run.summary()
