"""Model sources a production user has (``r1flow.loading``): a hub id pinned to its commit, a
folder in hub layout and an ``s3://`` mirror — on small random-weight models built from the real
configs and tokenizers in shared/data/hub, resolved offline from a filled hub cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1flow.config import ConfigError, load_config
from r1flow.loading import SourceError, load_tokenizer, local_path, pin
from r1flow.modeling import load_model, save_model
from r1flow.preflight import preflight
from tests.conftest import REPO, SHARED_DATA, shrunk_model_folder
from tests.s3server import create_bucket, dummy_aws_env, moto_server

QWEN_MATH, SMOL = "Qwen/Qwen2.5-Math-1.5B", "HuggingFaceTB/SmolLM2-135M-Instruct"
R1_DISTILL = "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B"


def _main_sha(cache: Path, repo: str) -> str:
    return (cache / f"models--{repo.replace('/', '--')}" / "refs" / "main").read_text()


def test_a_hub_id_pins_to_its_commit_offline_and_bad_ones_name_themselves(hub_cache):
    sha = _main_sha(hub_cache, QWEN_MATH)
    assert pin(QWEN_MATH) == sha and pin(QWEN_MATH, "main") == sha and pin(QWEN_MATH, sha) == sha
    with pytest.raises(SourceError, match="revision v9 is not in the hub cache"):
        pin(QWEN_MATH, "v9")
    with pytest.raises(SourceError, match="nobody/nothing"):
        pin("nobody/nothing")
    with pytest.raises(SourceError, match="neither a hub id"):
        pin("not a model")


def test_preflight_pins_hub_sources_into_the_config_and_names_bad_fields(hub_cache, tmp_path):
    cfg = load_config("micro", sets=[f"base.teacher.source={QWEN_MATH}", f"base.student.source={SMOL}"])
    pinned = preflight(cfg, str(tmp_path / "store"))
    assert pinned.base.teacher.resolved == _main_sha(hub_cache, QWEN_MATH)
    assert pinned.base.student.resolved == _main_sha(hub_cache, SMOL)
    assert preflight(pinned, str(tmp_path / "store")) == pinned  # a stage flow re-checks the same pin
    moved = pinned.model_copy(deep=True)
    moved.base.teacher.resolved = "0" * 40
    with pytest.raises(ConfigError, match="base.teacher.source"):
        preflight(moved, str(tmp_path / "store"))
    for bad, message in ((f"{QWEN_MATH}", "revision nope"), ("/no/such/folder", "does not exist"),
                         (str(tmp_path), "no config.json")):
        sets = [f"base.teacher.source={bad}"] + (["base.teacher.revision=nope"] if "revision" in message else [])
        with pytest.raises(ConfigError, match=f"base.teacher.source: .*{message}"):
            preflight(load_config("micro", sets=sets), str(tmp_path / "store"))


def test_remote_code_is_refused_unless_the_config_turns_it_on(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "my_arch", "auto_map": {
        "AutoConfig": "modeling.MyConfig", "AutoModelForCausalLM": "modeling.MyModel"}}))
    with pytest.raises(SourceError, match="trust_remote_code: true"):
        pin(str(folder))
    assert pin(str(folder), trust_remote_code=True).startswith("local-")


def test_a_folder_is_pinned_by_its_content(tmp_path, hub_cache):
    folder = shrunk_model_folder(SHARED_DATA / "hub" / "Qwen--Qwen2.5-0.5B", tmp_path / "m")
    first = pin(str(folder))
    assert pin(str(folder)) == first
    (folder / "extra.txt").write_text("changed")
    assert pin(str(folder)) != first


def test_an_s3_mirror_is_pinned_downloaded_once_and_loads(tmp_path, monkeypatch, hub_cache):
    import boto3

    folder = shrunk_model_folder(SHARED_DATA / "hub" / "HuggingFaceTB--SmolLM2-135M-Instruct", tmp_path / "m")
    monkeypatch.setenv("R1FLOW_HOME", str(tmp_path / "home"))
    with dummy_aws_env(), moto_server() as server:
        create_bucket(server.endpoint_url, "mirror")
        client = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        for f in folder.iterdir():
            client.upload_file(str(f), "mirror", f"models/smol/{f.name}")
        source = "s3://mirror/models/smol"
        version = pin(source, s3_endpoint_url=server.endpoint_url)
        assert version.startswith("s3-")
        spec = {"source": source, "resolved": version}
        path = local_path(spec, s3_endpoint_url=server.endpoint_url)
        assert Path(path).parent == tmp_path / "home" / "models"
        model, tok = load_model(path)
        assert type(model).__name__ == "LlamaForCausalLM" and tok.eos_token == "<|im_end|>"
        assert local_path(spec, s3_endpoint_url=server.endpoint_url) == path  # downloaded once
        client.put_object(Bucket="mirror", Key="models/smol/config.json", Body=b"{}")
        with pytest.raises(SourceError, match="changed since the pipeline pinned it"):
            local_path(spec, s3_endpoint_url=server.endpoint_url)
        with pytest.raises(SourceError, match="no config.json"):
            pin("s3://mirror/models/none", s3_endpoint_url=server.endpoint_url)


def test_real_tokenizer_conventions(hub_cache):
    smol = load_tokenizer(SMOL, revision=_main_sha(hub_cache, SMOL))  # no tokenizer_config.json
    assert (smol.eos_token, smol.eos_token_id, smol.pad_token_id, smol.padding_side) == ("<|im_end|>", 2, 2, "left")
    qwen = load_tokenizer(QWEN_MATH)
    assert (qwen.eos_token_id, qwen.pad_token_id, qwen.bos_token) == (151643, 151643, None)
    r1 = load_tokenizer(R1_DISTILL)
    assert r1("2+3")["input_ids"][0] == 151646 == r1.bos_token_id  # the BOS comes from tokenizer.json
    assert r1.apply_chat_template([{"role": "user", "content": "2+3?"}], tokenize=False,
                                  add_generation_prompt=True).endswith("<｜Assistant｜>")


@pytest.mark.parametrize("repo", [QWEN_MATH, SMOL, R1_DISTILL])
def test_saved_models_reload_with_the_same_tokenizer_and_template(repo, hub_cache, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = load_model(repo)
    saved = save_model(model, tok, tmp_path / "saved")
    again, tok2 = load_model(str(saved))
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    text = "Natalia sold clips to 48 of her friends <think> 5 </think>"
    assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    assert (tok2.eos_token_id, tok2.pad_token_id, tok2.chat_template) == (tok.eos_token_id, tok.pad_token_id,
                                                                          tok.chat_template)
    ids = torch.tensor([tok(text)["input_ids"]])
    assert torch.equal(reloaded(ids).logits, model(ids).logits) and type(again) is type(model)


def test_hub_access_is_the_users_environment(tmp_path):
    """Stage processes and the CLI pass the user's hub settings through; offline is never forced."""
    from r1flow.runtime import Runtime

    hub = ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_ENDPOINT", "HF_HOME", "HF_HUB_CACHE")
    assert not set(hub) & set(Runtime(home=tmp_path).stage_env())
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("HF_HUB_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", "import os; from flows.cli import _setup_env; _setup_env(); "
                          "print(os.environ.get('HF_HUB_OFFLINE'))"], cwd=REPO, capture_output=True, text=True,
                         env={**env, "R1FLOW_HOME": str(tmp_path)}, timeout=120)
    assert out.stdout.strip() == "None", out.stderr


def test_a_hub_cache_copied_elsewhere_still_resolves(hub_cache, tmp_path):
    """What an air-gapped worker does with a cache copied from a machine that downloaded it."""
    copy = tmp_path / "cache"
    shutil.copytree(hub_cache / f"models--{SMOL.replace('/', '--')}", copy / f"models--{SMOL.replace('/', '--')}")
    out = subprocess.run([sys.executable, "-c", f"from r1flow.loading import pin; print(pin('{SMOL}'))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "HF_HUB_CACHE": str(copy), "HF_HUB_OFFLINE": "1"})
    assert out.stdout.strip() == _main_sha(hub_cache, SMOL), out.stderr
