"""Kubernetes job templates and GPU worker commands: no stage pod a node evicts first, no GPU shared.

- Every container of the Kubernetes work-pool templates (deployments/work-pools/kubernetes-*.json)
  requests and limits CPU, memory and GPUs through template variables that the template's
  ``variables`` section declares with defaults; rendered with those defaults (Prefect's own
  validation and templating, as ``prefect work-pool create`` and the worker use them) the pod is
  in the Guaranteed QoS class: requests == limits for every resource. A BestEffort pod (GPU only)
  is the first a node evicts under memory pressure.
- Every ``prefect worker start`` on a GPU pool written anywhere in the repository (compose,
  Dockerfiles, README, deployment docs, Makefile, tests) takes one run at a time (``--limit 1``):
  without it a process or Docker worker starts a second stage run on the same GPU.
"""

from __future__ import annotations

import json
import re
import shlex
from fractions import Fraction
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = sorted((ROOT / "deployments" / "work-pools").glob("kubernetes-*.json"))
GUARANTEED = ("cpu", "memory", "nvidia.com/gpu")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
UNITS = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
SKIP_DIRS = {".git", ".venv", ".r1flow", "__pycache__", "node_modules", ".pytest_cache", ".ruff_cache"}


def quantity(value) -> Fraction:
    """A Kubernetes resource quantity ('8', '500m', '64Gi', 1) as a number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([a-zA-Z]*)", str(value).strip())
    assert m and m.group(2) in UNITS, f"not a Kubernetes quantity: {value!r}"
    return Fraction(m.group(1)) * UNITS[m.group(2)]


def _containers(job_configuration: dict) -> list[dict]:
    pod = job_configuration["job_manifest"]["spec"]["template"]["spec"]
    return pod["containers"] + pod.get("initContainers", [])


def _rendered(template: dict) -> dict:
    """The job configuration a worker builds when a deployment sets no job variables."""
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    validate_base_job_template(template)  # what the API checks on `prefect work-pool create`
    defaults = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    return apply_values(template["job_configuration"], defaults)


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_container_requests_and_limits_cpu_memory_and_gpus_through_declared_variables(path):
    template = json.loads(path.read_text())
    declared = template["variables"]["properties"]
    for container in _containers(template["job_configuration"]):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            for resource in GUARANTEED:
                value = resources.get(kind, {}).get(resource)
                m = PLACEHOLDER.fullmatch(str(value))
                assert m, f"{path.name} {container['name']}: {kind}.{resource} is {value!r}, not a variable"
                variable = declared.get(m.group(1))
                assert variable is not None, f"{path.name}: {m.group(1)} is not declared in variables"
                assert variable.get("default") not in (None, ""), f"{path.name}: {m.group(1)} has no default"
                assert len(variable.get("description", "")) > 40, f"{path.name}: document {m.group(1)}"


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_the_defaults_render_a_guaranteed_qos_pod_sized_for_the_1_5b_preset(path):
    template = json.loads(path.read_text())
    rendered = _rendered(template)
    for container in _containers(rendered):
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        for resource in GUARANTEED:
            assert quantity(requests[resource]) == quantity(limits[resource]), \
                f"{path.name}: {resource} request {requests[resource]!r} != limit {limits[resource]!r}"
        assert quantity(requests["nvidia.com/gpu"]) >= 1
        assert quantity(requests["cpu"]) >= 8  # the 1.5B preset's stages run 8 threads
        assert quantity(requests["memory"]) >= quantity("64Gi")
    # /dev/shm is memory-backed: what it holds counts against the pod's memory limit
    pod = rendered["job_manifest"]["spec"]["template"]["spec"]
    (shm,) = [v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if v["name"] == "dshm"]
    assert all(quantity(shm) < quantity(c["resources"]["limits"]["memory"]) for c in _containers(rendered))


def test_a_team_sizes_a_stage_by_job_variables():
    """Job variables (``launch.job_variables``) override the defaults, requests and limits alike."""
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration

    template = json.loads(TEMPLATES[0].read_text())
    values = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    values.update(cpu_request="16", cpu_limit="16", memory_request="200Gi", memory_limit="200Gi", gpus=2)
    (container,) = _containers(apply_values(template["job_configuration"], values))
    assert container["resources"] == {"requests": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": 2},
                                      "limits": {"cpu": "16", "memory": "200Gi", "nvidia.com/gpu": 2}}


# ---- `prefect worker start` on a GPU pool: one run at a time ------------------------------------

WORKER_START = re.compile(r"""\bworker["',\s]+start\b""")


def _repo_files():
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]) or not path.is_file():
            continue
        if path.stat().st_size > 1_000_000:
            continue
        try:
            yield path, path.read_text()
        except UnicodeDecodeError:
            continue


def worker_commands(text: str) -> list[list[str]]:
    """The arguments after each ``worker start`` in ``text``: a list form (``["prefect", "worker",
    "start", "--pool", ...]`` in compose, a Dockerfile CMD, a test's Popen) up to its ``]``, or a
    shell line (backslash continuations joined, a trailing ``# comment`` dropped)."""
    commands = []
    for m in WORKER_START.finditer(text):
        rest = text[m.end():]
        if rest[:1] in "\"'":  # an element of a list: the command ends at the list's end
            commands.append(re.findall(r"""["']([^"']*)["']""", rest[1:].split("]", 1)[0]))
            continue
        line = re.split(r"(?<!\\)\n", rest, maxsplit=1)[0].replace("\\\n", " ")
        line = re.split(r"\s#", line, maxsplit=1)[0].split("`", 1)[0]
        try:
            commands.append(shlex.split(line))
        except ValueError:
            commands.append(line.split())
    return commands


def _option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def test_worker_commands_are_found_in_every_form():
    gpu_one = [["--pool", "r1flow-gpu", "--limit", "1"]]
    in_a_list = 'CMD ["prefect", "worker", "start", "--pool", "r1flow-gpu", "--limit", "1"]'
    continued = "R1FLOW_REPO=$PWD prefect worker start --pool r1flow-gpu \\\n  --limit 1  # x\n"
    assert worker_commands(in_a_list) == gpu_one and worker_commands(continued) == gpu_one
    assert worker_commands("by ``prefect worker start --run-once`` on the CPU pool") == [["--run-once"]]


def test_every_gpu_worker_takes_one_run_at_a_time():
    found, offenders = [], []
    for path, text in _repo_files():
        for args in worker_commands(text):
            pool = _option(args, "--pool", "-p")
            if pool is None or "gpu" not in pool.lower():
                continue
            where = f"{path.relative_to(ROOT)}: worker start {' '.join(args)}"
            found.append(str(path.relative_to(ROOT)))
            if _option(args, "--limit", "-l") != "1":
                offenders.append(where)
    assert not offenders, "GPU workers without --limit 1 (two stage runs would share a GPU):\n" + \
        "\n".join(offenders)
    # not vacuous: the compose stack, the GPU image and the README's by-hand command were all read
    assert {"docker/compose.yaml", "docker/Dockerfile.gpu", "README.md"} <= set(found), found
