"""Settings the user gave are the ones r1flow uses: their Prefect profile, the MLflow experiment of
their config, every config value as an MLflow param (secrets excepted), data paths relative to the
file that names them, and registered candidates wherever in S3 they are stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from r1flow import mlflow_runs
from r1flow.config import ConfigError, load_config
from tests.conftest import REPO

# --- 7. the user's Prefect profile -------------------------------------------------------------

SETTINGS = ("from flows.cli import _setup_env; _setup_env()\n"
            "from prefect.settings import get_current_settings as s\n"
            "key = s().api.key.get_secret_value() if s().api.key else None\n"
            "print(__import__('json').dumps([s().api.url, key, str(s().home)]))\n")


def _prefect(tmp_path: Path, script: str, profile: str | None = None, **env: str):
    """``script`` in a process whose HOME is ``tmp_path`` (its ~/.prefect/profiles.toml holding
    ``profile``), with no PREFECT_* setting in its environment but ``env``."""
    home = tmp_path / "user"
    (home / ".prefect").mkdir(parents=True, exist_ok=True)
    if profile is not None:
        (home / ".prefect" / "profiles.toml").write_text(profile)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env = {**clean, "HOME": str(home), "R1FLOW_HOME": str(tmp_path / "r1flow"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **env}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_the_active_prefect_profile_names_the_api_flows_run_against(tmp_path, prefect_server):
    flow_name = f"r1flow-profile-check-{os.getpid()}"
    profile = f'active = "team"\n[profiles.team]\nPREFECT_API_URL = "{prefect_server}"\n'
    script = SETTINGS + f"from prefect import flow\n\n@flow(name={flow_name!r})\ndef check():\n    pass\n"
    script += "check()\n"
    out = _prefect(tmp_path, script, profile)
    url, _, home = json.loads(out.stdout.splitlines()[0])
    assert url == prefect_server and home == str(tmp_path / "user" / ".prefect")
    request = urllib.request.Request(f"{prefect_server}/flows/filter", method="POST",
                                     data=json.dumps({"flows": {"name": {"any_": [flow_name]}}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert [f["name"] for f in json.load(response)] == [flow_name]  # it ran on the user's server


def test_an_api_url_in_the_environment_keeps_the_profiles_key_and_none_means_ephemeral(tmp_path):
    profile = 'active = "cloud"\n[profiles.cloud]\nPREFECT_API_KEY = "pnu_r1flowprofilecheck"\n'
    out = _prefect(tmp_path, SETTINGS, profile, PREFECT_API_URL="http://127.0.0.1:9/api")
    assert json.loads(out.stdout) == ["http://127.0.0.1:9/api", "pnu_r1flowprofilecheck",
                                      str(tmp_path / "user" / ".prefect")]
    out = _prefect(tmp_path, SETTINGS, 'active = "local"\n[profiles.local]\n')
    assert json.loads(out.stdout) == [None, None, str(tmp_path / "r1flow" / "prefect")]  # r1flow's own


# --- 8. tracking.experiment in status, report, compare, resume ---------------------------------

@pytest.fixture
def cli(monkeypatch, tmp_path):
    """The ``r1flow`` app in this process, its environment and SIGTERM handler restored after."""
    from typer.testing import CliRunner

    from flows.cli import app

    saved, handler = dict(os.environ), signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("R1FLOW_HOME", str(tmp_path / "r1flow"))
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    yield lambda *args: CliRunner().invoke(app, list(args))
    os.environ.clear()
    os.environ.update(saved)
    signal.signal(signal.SIGTERM, handler)


def _logged_pipeline(tmp_path: Path, experiment: str, name: str, reward: float) -> str:
    """A finished pipeline run as ``flows.run.PipelineRun`` records it, with an R1-Zero stage run,
    its store record in a store of its own (not the default one)."""
    from r1flow import lineage
    from r1flow.store import open_store

    uri = os.environ["MLFLOW_TRACKING_URI"]
    config = load_config("micro", sets=[f"store.root={tmp_path / 'team-store'}",
                                        f"tracking.experiment={experiment}"])
    exp_id = mlflow_runs.experiment_id(uri, experiment, tmp_path / "mlartifacts")
    parent = mlflow_runs.start_run(uri, exp_id, name,
                                   tags={mlflow_runs.TAG_NAME: name, "r1flow.flow": "r1-pipeline"})
    mlflow_runs.log_params(uri, parent, mlflow_runs.flatten(config.model_dump(mode="json")))
    stage = mlflow_runs.start_run(uri, exp_id, "r1_zero", parent=parent,
                                  tags={mlflow_runs.TAG_NAME: name, mlflow_runs.TAG_STAGE: "r1_zero"})
    for step in range(3):
        mlflow_runs.client(uri).log_metric(stage, "reward/mean", reward + step / 10, step=step)
    mlflow_runs.end_run(uri, stage)
    mlflow_runs.set_tags(uri, parent, {f"r1flow.stage.r1_zero.{k}": v for k, v in {
        "state": "done", "run": stage, "uri": "file:///nowhere/r1_zero",
        "inputs": json.dumps({"policy": "file:///base"})}.items()})
    mlflow_runs.end_run(uri, parent)
    lineage.write_pipeline(open_store(config.store.root), lineage.PipelineRecord(
        name=name, flow="r1-pipeline", config=config.model_dump(mode="json"), parent_run_id=parent,
        status="done"))
    return parent


def test_status_report_compare_and_resume_read_the_configured_experiment(cli, tmp_path):
    from flows.status import inputs_of

    first = _logged_pipeline(tmp_path, "team-exp", "first", 0.25)
    _logged_pipeline(tmp_path, "team-exp", "second", 0.5)
    (tmp_path / "team.yaml").write_text("tracking: {experiment: team-exp}\n")

    out = cli("status", "first", "--experiment", "team-exp")
    assert out.exit_code == 0 and f"MLflow run {first}" in out.output and "r1_zero" in out.output, out.output
    out = cli("report", "first", "--set", "tracking.experiment=team-exp", "--format", "csv")
    assert out.exit_code == 0 and "r1_zero,done" in out.output and "0.450" in out.output, out.output
    out = cli("compare", "first", "second", "--config", str(tmp_path / "team.yaml"),
              "--out", str(tmp_path / "cmp"))
    assert out.exit_code == 0 and "reward/mean" in out.output, out.output
    assert (tmp_path / "cmp" / "compare_r1_zero.png").is_file()
    out = cli("resume", "second", "--experiment", "team-exp")  # its record is in the store its run names
    assert out.exit_code == 0 and "finished; nothing to resume" in out.output, out.output
    team = load_config("micro", sets=["tracking.experiment=team-exp"])
    assert inputs_of("r1_zero", "first", team) == {"policy": "file:///base"}  # `r1flow stage`
    out = cli("status", "first")  # the default experiment has no such run, and says where it looked
    assert "no pipeline run named 'first'" in out.output and "r1flow" in out.output, out.output


# --- 9. params: settings kept, secrets dropped --------------------------------------------------

PLANTED = {  # value planted -> the part that must not reach MLflow
    "https://user:s3cr3t-pass@objects.example.com": "s3cr3t-pass",
    "AKIAR1FLOWPLANTED777": "AKIAR1FLOWPLANTED777",
    "hf_R1flowPlantedHubTokenValue0123456789": "hf_R1flowPlantedHubTokenValue0123456789"}


def _leaves(node, prefix: str = ""):
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        yield from _leaves(value, path) if isinstance(value, dict) else [(path, value)]


@pytest.mark.parametrize("preset", ["micro", "qwen2.5-math-1.5b"])
def test_every_numeric_setting_reaches_the_params_and_planted_secrets_do_not(preset):
    endpoint, key, token = PLANTED
    planted = f"sft.launch.job_variables={{image: 'r1:{key}', env: {{NOTE: {token}}}}}"
    config = load_config(preset, sets=[f"store.s3_endpoint_url={endpoint}", planted])
    dump = config.model_dump(mode="json")
    params = mlflow_runs.flatten(dump)
    numeric = {k: v for k, v in _leaves(dump) if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert {"evaluate.max_new_tokens", "cold_start.max_new_tokens", "r1_zero.grpo.max_new_tokens",
            "rejection_sampling.max_new_tokens"} <= set(numeric)
    missing = {k: v for k, v in numeric.items() if params.get(k) != str(v)}
    assert not missing, missing
    leaks = [(k, v) for k, v in params.items() for secret in PLANTED.values() if secret in v]
    assert not leaks, leaks
    assert params["store.s3_endpoint_url"] == "https://***@objects.example.com"  # the host is kept
    assert mlflow_runs.flatten({"s3": {"aws_secret_access_key": "x", "password": "y", "tokenizer": "t"}}) == \
        {"s3.tokenizer": "t"}  # by exact secret name: 'tokenizer' is no token


# --- 10. data paths relative to the file that names them ----------------------------------------

def test_the_micro_preset_passes_preflight_from_another_directory(tmp_path, monkeypatch):
    from r1flow.config import resolve
    from r1flow.preflight import preflight

    monkeypatch.chdir(tmp_path)
    for config in (load_config("micro"), resolve({"preset": "micro"})):  # the CLI, a deployment's flow
        preflight(config, str(tmp_path / "store"))
        assert Path(config.cold_start.sources[1]).is_file()
    monkeypatch.chdir(REPO)  # from the repo root the preset's paths stay as written: portable to workers
    assert load_config("micro").cold_start.sources == ["r1_zero", "configs/data/arith_cot.jsonl"]


def _write_user_files(folder: Path) -> None:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "cot.jsonl").write_text(json.dumps(
        {"question": "Compute 1 + 1", "answer": "2", "completion": " <think> 1 plus 1 is 2. </think> "
                                                                  "<answer> 2 </answer>"}) + "\n")
    (folder / "data" / "test.jsonl").write_text(json.dumps({"question": "1 + 3?", "answer": "so #### 4"}))
    (folder / "prefs.jsonl").write_text(json.dumps({"prompt": "Hi", "chosen": "Hello!", "rejected": "no"}))


def test_a_user_config_reads_its_paths_next_to_itself(tmp_path, monkeypatch):
    from r1flow.preflight import preflight

    folder = tmp_path / "project"
    _write_user_files(folder)
    (folder / "r1.yaml").write_text(
        "cold_start: {sources: [r1_zero, data/cot.jsonl]}\n"
        "evaluate: {benchmarks: [arith_heldout, gsm8k=data/test.jsonl, {path: data/test.jsonl}]}\n"
        "reward_model: {preferences: prefs.jsonl}\n")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    config = load_config("micro", folder / "r1.yaml", sets=["rejection_sampling.prompts=gsm8k=mine.jsonl"])
    assert config.cold_start.sources == ["r1_zero", str(folder / "data" / "cot.jsonl")]
    assert config.evaluate.benchmarks[1] == f"gsm8k={folder / 'data' / 'test.jsonl'}"
    assert config.evaluate.benchmarks[2].path == str(folder / "data" / "test.jsonl")
    assert config.reward_model.preferences == str(folder / "prefs.jsonl")
    assert config.rejection_sampling.prompts == "gsm8k=mine.jsonl"  # --set: relative to the current directory
    preflight(config, str(tmp_path / "store"), ("cold_start", "evaluation"))


@pytest.mark.parametrize("yaml_text, field", [
    ("reward_model: {preferences: missing.jsonl}\n", "reward_model.preferences"),
    ("cold_start: {sources: [r1_zero, data/missing.jsonl]}\n", "cold_start.sources.1"),
    ("r1_zero: {prompts: [{source: gsm8k=missing.jsonl}]}\n", "r1_zero.prompts.0.source"),
    ("base: {teacher: {source: ./models/missing}}\n", "base.teacher.source"),
])
def test_a_missing_relative_path_of_a_user_config_names_its_field(tmp_path, yaml_text, field):
    (tmp_path / "r1.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"{field.replace('.', '[.]')}: {tmp_path}/.*missing.*r1.yaml"):
        load_config("micro", tmp_path / "r1.yaml")


def test_a_preset_extending_another_reads_each_files_paths_next_to_it(tmp_path, monkeypatch):
    from r1flow import config as config_module

    _write_user_files(tmp_path / "team")
    (tmp_path / "team" / "configs").mkdir()
    (tmp_path / "team" / "configs" / "team-micro.yaml").write_text(
        "extends: micro\nreward_model: {preferences: prefs.jsonl}\n"
        "evaluate: {benchmarks: [gsm8k=data/test.jsonl]}\n")
    dirs = [tmp_path / "team" / "configs", *config_module.CONFIG_DIRS]
    monkeypatch.setattr(config_module, "CONFIG_DIRS", dirs)
    monkeypatch.chdir(tmp_path)
    config = load_config("team-micro")
    assert config.reward_model.preferences == str(tmp_path / "team" / "prefs.jsonl")
    assert config.evaluate.benchmarks == [f"gsm8k={tmp_path / 'team' / 'data' / 'test.jsonl'}"]
    assert config.cold_start.sources[1] == str(REPO / "configs" / "data" / "arith_cot.jsonl")


# --- 11. the nightly evaluation of an s3:// candidate -------------------------------------------

@pytest.fixture(scope="module")
def s3():
    from tests.s3server import create_bucket, dummy_aws_env, moto_server

    with dummy_aws_env(), moto_server() as server:
        for bucket in ("models", "runtime"):
            create_bucket(server.endpoint_url, bucket)
        yield server.endpoint_url


@pytest.mark.parametrize("runtime_store", ["local", "s3://runtime/nightly", "s3://models/team"])
def test_the_nightly_evaluation_opens_a_candidate_registered_in_s3(tmp_path, s3, runtime_store):
    from flows.models import resolve_model
    from r1flow import registry
    from r1flow.runtime import Runtime
    from r1flow.store import open_store

    model = tmp_path / "final" / "model"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "qwen2"}')
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    ref = open_store("s3://models/team", s3_endpoint_url=s3).put_dir(
        tmp_path / "final", "artifacts/final_rl/abc", meta={"stage": "final_rl", "mlflow_run_id": "r1"})
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    registry.register(tracking, "r1flow-team", ref)
    root = str(tmp_path / "store") if runtime_store == "local" else runtime_store
    config = load_config("micro", sets=[f"store.root={root}", f"store.s3_endpoint_url={s3}"])
    runtime = Runtime(home=tmp_path / "home", store_root=root, s3_endpoint_url=s3, tracking_uri=tracking)

    found, version = resolve_model("models:/r1flow-team@candidate", config, runtime)
    assert version.source == ref.uri and found.digest == ref.digest and found.meta["stage"] == "final_rl"
    store = runtime.store()  # what the evaluation stage reads its input through
    assert store.verify(found.uri, deep=True)
    same_store = runtime_store == "s3://models/team"
    assert found.uri == ref.uri if same_store else found.uri.startswith(store.root_uri + "/imported/")
    copy = store.get_dir(found, tmp_path / "read")
    assert (copy / "model" / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
