"""The ``r1flow`` command: run the pipeline, one stage or the R1-Zero branch; show status/report.

Embedded defaults: Prefect's ephemeral API (unless ``PREFECT_API_URL`` is set, in the environment or
in the user's active Prefect profile, whose API and key are then used), MLflow on sqlite
under ``$R1FLOW_HOME`` (unless ``MLFLOW_TRACKING_URI`` is set), the store in a local folder.
Prefect is imported only after the environment is set, so its settings take effect.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])

Preset = typer.Option("tiny", "--preset", "-p", help="configs/<preset>.yaml")
ConfigFile = typer.Option(None, "--config", "-c", help="YAML file overriding the preset")
Sets = typer.Option(None, "--set", "-s", help="stage.key=value (repeatable)")
Name = typer.Option("r1", "--name", "-n", help="pipeline run name (MLflow tag; reuse to compare)")
AllowChange = typer.Option(False, "--allow-config-change",
                           help="continue a crashed stage from its checkpoint although its config changed")
Experiment = typer.Option(None, "--experiment", "-e", help="MLflow experiment of the runs (default: "
                          "tracking.experiment of --preset/--config/--set, else r1flow)")
ReadPreset = typer.Option(None, "--preset", "-p", help="read tracking.experiment from configs/<preset>.yaml")


def _setup_env() -> None:
    from r1flow.runtime import default_home

    home = default_home()
    home.mkdir(parents=True, exist_ok=True)
    profile = _prefect_profile()
    defaults = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        "PREFECT_LOGGING_LOG_PRINTS": "true",
        "TOKENIZERS_PARALLELISM": "false",  # hub access and offline mode stay the user's environment
    }
    if not (os.environ.get("PREFECT_API_URL") or profile.get("PREFECT_API_URL")):
        defaults["PREFECT_HOME"] = str(home / "prefect")  # no API of the user's: an ephemeral one of r1flow's
    for k, v in defaults.items():
        if k not in profile:
            os.environ.setdefault(k, v)
    signal.signal(signal.SIGTERM, _terminate)


def _prefect_profile() -> dict[str, str]:
    """The settings of the user's active Prefect profile (``PREFECT_PROFILE``, else the ``active``
    one of ``$PREFECT_PROFILES_PATH``, else of ``$PREFECT_HOME/profiles.toml``, ``~/.prefect`` by
    default) — read here, before Prefect is imported: a profile naming an API (a server, or Prefect
    Cloud after ``prefect cloud login``) keeps the user's PREFECT_HOME and so that API and its key."""
    import tomllib
    from pathlib import Path

    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    profile = data.get("profiles", {}).get(os.environ.get("PREFECT_PROFILE") or data.get("active") or "", {})
    return {str(k): str(v) for k, v in profile.items()} if isinstance(profile, dict) else {}


def _terminate(signum, frame):  # stop stage process groups, then exit
    from r1flow.launcher import kill_all

    kill_all()
    raise SystemExit(128 + signum)


def _load(preset: str | None, config: Optional[str], sets: Optional[list[str]]):
    from r1flow.config import ConfigError, load_config
    from r1flow.preflight import preflight
    from r1flow.runtime import Runtime

    try:
        cfg = load_config(preset, config, sets or [])
        cfg = preflight(cfg, Runtime(store_root=cfg.store.root).store_root)  # model sources pinned
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    return cfg


def _experiment(experiment: Optional[str], preset: Optional[str] = None, config: Optional[str] = None,
                sets: Optional[list[str]] = None) -> str:
    """The MLflow experiment a command reads: ``--experiment``, else the config's ``tracking.experiment``."""
    from r1flow.config import ConfigError, load_config

    if experiment:
        return experiment
    try:
        return load_config(preset, config, sets or []).tracking.experiment
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)


def _run_flow(flow_fn, **kwargs) -> None:
    from flows.run import ConfigChanged, KeyMismatch
    from r1flow.config import ConfigError
    from r1flow.launcher import StageInputError

    state = flow_fn(**kwargs, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        typer.secho(f"pipeline failed: {error if isinstance(error, Exception) else state.message}",
                    fg="red", err=True)
        typer.echo(f"Prefect flow run: {flow_run_id}")
        raise typer.Exit(2 if isinstance(error, (ConfigChanged, ConfigError, KeyMismatch, StageInputError)) else 1)
    summary = state.result()
    typer.echo(f"MLflow parent run: {summary['mlflow_parent_run']} "
               f"(experiment {summary['experiment_id']}, tracking {summary['tracking_uri']})")
    typer.echo(f"Prefect flow run:  {flow_run_id}")
    for stage, uri in summary["artifacts"].items():
        typer.echo(f"  {stage:<20} {uri}")


@app.command()
def run(preset: str = Preset, config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
        name: str = Name, refresh: Optional[list[str]] = typer.Option(None, "--refresh",
                                                                      help="force a stage to re-run"),
        allow_config_change: bool = AllowChange):
    """Run the full pipeline (reusing NAME continues that run's crashed stage from its checkpoint)."""
    _setup_env()
    cfg = _load(preset, config, set_)
    from flows.pipeline import pipeline

    _run_flow(pipeline, config=cfg.model_dump(mode="json"), name=name, refresh=refresh or [],
              allow_config_change=allow_config_change)


@app.command()
def resume(name: str = typer.Argument(..., help="the pipeline run to resume"), set_: Optional[list[str]] = Sets,
           refresh: Optional[list[str]] = typer.Option(None, "--refresh", help="start a stage afresh"),
           allow_config_change: bool = AllowChange,
           store: Optional[str] = typer.Option(None, "--store", help="store root holding the run's record "
                                               "(default: the one its MLflow run names)"),
           s3_endpoint_url: Optional[str] = typer.Option(None, "--s3-endpoint-url"),
           experiment: Optional[str] = Experiment):
    """Resume a failed or killed run: finished stages are reused, a crashed one continues from its
    newest checkpoint, in the same MLflow runs."""
    _setup_env()
    from flows.pipeline import pipeline, r1_zero
    from flows.status import pipeline_record
    from r1flow.config import ConfigError, apply_set, validate

    try:
        record = pipeline_record(name, store, s3_endpoint_url, _experiment(experiment))
        data = record.config
        for assignment in set_ or []:
            data = apply_set(data, assignment)
        cfg = validate(data)
    except (LookupError, ConfigError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    if record.status == "done":
        typer.echo(f"run {name!r} finished; nothing to resume (see: r1flow status {name})")
        return
    flow_fn = {"r1-pipeline": pipeline, "r1-zero": r1_zero}[record.flow]
    _run_flow(flow_fn, config=cfg.model_dump(mode="json"), name=name, refresh=refresh or [],
              allow_config_change=allow_config_change, resume=True)


@app.command("r1-zero")
def r1_zero(preset: str = Preset, config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
            name: str = typer.Option("r1-zero", "--name", "-n"), allow_config_change: bool = AllowChange,
            refresh: Optional[list[str]] = typer.Option(None, "--refresh", help="force a stage to re-run")):
    """Run the R1-Zero branch: RL straight from the base model."""
    _setup_env()
    cfg = _load(preset, config, set_)
    from flows.pipeline import r1_zero as flow_fn

    _run_flow(flow_fn, config=cfg.model_dump(mode="json"), name=name, refresh=refresh or [],
              allow_config_change=allow_config_change)


@app.command()
def stage(stage_name: str = typer.Argument(..., metavar="STAGE"), preset: str = Preset,
          config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets, name: str = Name,
          input_: Optional[list[str]] = typer.Option(None, "--input", "-i",
                                                     help="name=URI; default: the inputs of run NAME"),
          refresh: bool = typer.Option(False, "--refresh", help="ignore the cache"),
          allow_config_change: bool = AllowChange):
    """Run one stage flow, on explicit inputs or on those of the latest run NAME."""
    _setup_env()
    cfg = _load(preset, config, set_)
    from flows.pipeline import stage as flow_fn
    from flows.status import inputs_of

    inputs = dict(i.split("=", 1) for i in input_ or [])
    try:
        inputs = {**inputs_of(stage_name, name, cfg), **inputs}
    except LookupError as exc:
        if not input_:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2)
    _run_flow(flow_fn, stage=stage_name, config=cfg.model_dump(mode="json"), inputs=inputs,
              name=name, refresh=refresh, allow_config_change=allow_config_change)


@app.command()
def evaluate(model: str = typer.Argument(..., help="models:/NAME@ALIAS, models:/NAME/VERSION, run:NAME[/STAGE] "
                                         "or an artifact URI"),
             preset: str = Preset, config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
             name: str = typer.Option("r1-eval", "--name", "-n"),
             refresh: bool = typer.Option(False, "--refresh", help="evaluate again although cached")):
    """Evaluate one model on the `evaluate` benchmarks (pass@1 over k samples, cons@k)."""
    _setup_env()
    cfg = _load(preset, config, set_)
    from flows.pipeline import evaluation

    _run_flow(evaluation, model=model, config=cfg.model_dump(mode="json"), name=name, refresh=refresh)


@app.command()
def promote(model: str = typer.Argument(..., help="registered model name, e.g. r1flow-tiny"),
            version: str = typer.Argument(..., help="the version to make champion"),
            reason: str = typer.Option("", "--reason", help="recorded on the version")):
    """Make a registered version the champion by hand (the pipeline does it when one beats the champion)."""
    _setup_env()
    from r1flow import registry
    from r1flow.runtime import Runtime

    try:
        chosen = registry.promote_by_hand(Runtime().tracking_uri, model, version, reason)
    except registry.RegistryError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(f"models:/{model}@{registry.CHAMPION} -> version {chosen.version} ({chosen.source})")


@app.command()
def estimate(preset: str = Preset, config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
             gpu: str = typer.Option("H100", "--gpu", help="H100 | H200 | A100"),
             gpus: int = typer.Option(1, "--gpus", min=1), teacher_params: Optional[int] = typer.Option(
                 None, "--teacher-params", help="N of a base not in r1flow.estimate.KNOWN_PARAMS"),
             student_params: Optional[int] = typer.Option(None, "--student-params"),
             format_: str = typer.Option("table", "--format", help="table | json")):
    """GPU-hours and the memory plan per stage of a preset before running it (no GPU needed)."""
    from r1flow.config import ConfigError, load_config
    from r1flow.estimate import PEAK_BF16, Assumptions, estimate as run_estimate, model_params, render

    if gpu not in PEAK_BF16:
        typer.secho(f"--gpu {gpu!r}: known {sorted(PEAK_BF16)}", fg="red", err=True)
        raise typer.Exit(2)
    overrides = {k: v for k, v in (("teacher", teacher_params), ("student", student_params)) if v}
    try:
        cfg = load_config(preset, config, set_ or [])
        params = model_params(cfg, overrides)
    except (ConfigError, ValueError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    assumptions = Assumptions(gpu=gpu, gpus=gpus)
    hours = run_estimate(cfg, params, assumptions)
    plans = _memory_plans(cfg)
    if format_ == "json":
        import json

        memory = {p.stage: p.as_json() for p in plans}
        typer.echo(json.dumps([{"stage": r.stage, "gpu_hours": round(r.gpu_hours, 2),
                                **{k: v for k, v in memory.get(r.stage, {}).items() if k != "stage"}} for r in hours],
                              indent=1))
        return
    typer.echo(f"{cfg.preset or config}: teacher N = {params['teacher']:,}, student N = {params['student']:,}\n")
    typer.echo(render(hours, assumptions))
    if plans:
        from r1flow.memory_plan import render as render_memory

        typer.echo("Memory plan per GPU (r1flow.memory_plan):\n\n" + render_memory(plans, cfg.gpu_memory_gb))


def _memory_plans(cfg) -> list:
    """The memory plan of every stage, or none when a model's shape is unknown here."""
    from r1flow.memory_plan import model_shapes, plan

    try:
        return plan(cfg, model_shapes(cfg))
    except ValueError:
        return []


@app.command()
def status(name: Optional[str] = typer.Argument(None, help="pipeline run name (default: latest)"),
           experiment: Optional[str] = Experiment, preset: Optional[str] = ReadPreset,
           config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
           explain: Optional[str] = typer.Option(None, "--explain", help="STAGE: what its cache key is made of")):
    """Each stage of a pipeline run: done / cached / failed / running, artifact URI, MLflow run."""
    _setup_env()
    from flows.status import explain_stage, status_table

    if explain:
        if not name:
            typer.secho("--explain STAGE needs the run NAME", fg="red", err=True)
            raise typer.Exit(2)
        try:
            typer.echo(explain_stage(name, explain, _experiment(experiment, preset, config, set_)))
        except (LookupError, ValueError) as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2)
        return
    typer.echo(status_table(name, _experiment(experiment, preset, config, set_)))


@app.command()
def report(name: Optional[str] = typer.Argument(None),
           fmt: str = typer.Option("markdown", "--format", help="markdown | csv"),
           experiment: Optional[str] = Experiment, preset: Optional[str] = ReadPreset,
           config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets):
    """What a run produced: per-stage metrics, evaluation and wall time, from MLflow."""
    _setup_env()
    from flows.status import report_table

    typer.echo(report_table(name, fmt, _experiment(experiment, preset, config, set_)))


@app.command()
def compare(names: list[str] = typer.Argument(..., help="two or more pipeline run names"),
            fmt: str = typer.Option("text", "--format", help="text | markdown | csv"),
            out: str = typer.Option("", "--out", help="folder for compare.md/.csv and the PNGs "
                                    "(default: $R1FLOW_HOME/compare/NAME_A-vs-NAME_B)"),
            experiment: Optional[str] = Experiment, preset: Optional[str] = ReadPreset,
            config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets):
    """Runs side by side: each stage's key metrics and evaluation, curves overlaid (PNG, also in MLflow)."""
    _setup_env()
    experiment = _experiment(experiment, preset, config, set_)
    from flows.compare import compare as compare_runs
    from flows.compare import render
    from r1flow.runtime import Runtime

    runtime = Runtime()
    folder = out or str(runtime.home / "compare" / "-vs-".join(names))
    try:
        rows, files, run_id = compare_runs(runtime.tracking_uri, names, folder, experiment)
    except (LookupError, ValueError) as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(render(rows, names, fmt))
    typer.echo(f"\nwritten: {', '.join(str(f) for f in files)}\nMLflow run: {run_id}", err=fmt == "csv")


@app.command()
def findings(quick: bool = typer.Option(False, "--quick", help="micro preset: checks the flow, not the claims"),
             name: str = typer.Option("findings", "--name", "-n"),
             report_only: bool = typer.Option(False, "--report-only", help="re-render the report from the runs "
                                              "already in MLflow (no training)")):
    """Reproduce the paper's five findings at tiny scale over the fixed seeds; writes a report with verdicts."""
    _setup_env()
    from flows.experiments import findings as flow_fn

    state = flow_fn(quick=quick, name=name, report_only=report_only, return_state=True)
    if not state.is_completed():
        typer.secho(f"findings failed: {state.message}", fg="red", err=True)
        raise typer.Exit(1)
    result = state.result()
    typer.echo("\n".join(result["verdicts"]) + f"\nreport: {result['report']}\nMLflow run: {result['mlflow_run']}")


@app.command()
def alerts(webhook_url: str = typer.Option(..., "--webhook-url", envvar="R1FLOW_ALERT_WEBHOOK",
                                           help="where notices are POSTed (Slack or any webhook)"),
           stuck_after_hours: Optional[float] = typer.Option(
               None, "--stuck-after-hours", min=0.0003, help="default: the preset's estimated hours × 2 + 1"),
           preset: Optional[str] = typer.Option(None, "--preset", "-p", help="the longest preset the team runs"),
           config: Optional[str] = ConfigFile, set_: Optional[list[str]] = Sets,
           allow_private_urls: bool = typer.Option(False, "--allow-private-urls", help="e.g. a loopback receiver")):
    """Install Prefect automations that flag a failed or stuck pipeline run (needs a Prefect server)."""
    _setup_env()
    from flows.alerts import install

    cfg = None
    if preset or config:  # only its estimate is needed: no preflight (models, files, store) here
        from r1flow.config import ConfigError, load_config

        try:
            cfg = load_config(preset, config, set_ or [])
        except ConfigError as exc:
            typer.secho(str(exc), fg="red", err=True)
            raise typer.Exit(2)
    stuck = None if stuck_after_hours is None else stuck_after_hours * 3600
    for name in install(webhook_url, stuck_after_s=stuck, config=cfg, allow_private_urls=allow_private_urls):
        typer.echo(f"automation installed: {name}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
