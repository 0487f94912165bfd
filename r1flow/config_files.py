"""Reading config files: the error every config problem raises, and the file paths a config names
resolved next to the file that names them (a shipped preset, a preset it ``extends``, a user's
``--config``), so a run works from any directory (``r1flow.config`` layers the files)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An invalid config value or file, reported before any work starts."""


_BUILTIN_DATA = ("arith", "nonreasoning", "r1_zero", "arith_heldout")


def _local_paths(data: dict[str, Any], rl_stages: tuple[str, ...]) -> list[tuple[str, Any, Any, str, str]]:
    """Every local file a config mapping (as read from YAML) names, as ``(field, holder, key, prefix,
    path)`` with ``holder[key] == prefix + path``: problem files (``gsm8k=PATH``, a JSONL path, a data
    source's local ``path``) of RL prompts, cold start, rejection sampling and evaluation; cold-start
    JSONL sources; ``reward_model.preferences``; model folders given as ``./…`` or ``../…`` (anything
    else there is a hub id or ``s3://``)."""
    from r1flow.data.benchmarks import FORMATS

    def at(*keys: str) -> Any:
        node: Any = data
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    def problems(field: str, holder: Any, key: Any) -> list[tuple[str, Any, Any, str, str]]:
        value = holder[key]
        if isinstance(value, dict):
            field, holder, key, value = f"{field}.path", value, "path", value.get("path")
        if not isinstance(value, str) or value in _BUILTIN_DATA or value in FORMATS or "://" in value:
            return []
        fmt, sep, rest = value.partition("=")
        if not (sep and fmt in FORMATS):
            fmt, sep, rest = "", "", value
        return [(field, holder, key, fmt + sep, rest)]

    found = []
    for stage in rl_stages:
        prompts = at(stage, "prompts")
        for i, prompt in enumerate(prompts if isinstance(prompts, list) else []):
            if isinstance(prompt, dict) and "source" in prompt:
                found += problems(f"{stage}.prompts.{i}.source", prompt, "source")
    for stage in ("cold_start", "rejection_sampling"):
        if at(stage, "prompts") is not None:
            found += problems(f"{stage}.prompts", data[stage], "prompts")
    for field in ("cold_start.sources", "evaluate.benchmarks"):
        items = at(*field.split("."))
        for i in range(len(items) if isinstance(items, list) else 0):
            found += problems(f"{field}.{i}", items, i)
    for field in ("reward_model.preferences", "base.teacher.source", "base.student.source",
                  "reward_model.source"):
        *section, key = field.split(".")
        holder = at(*section)
        value = holder.get(key) if isinstance(holder, dict) else None
        if not isinstance(value, str) or not value:
            continue
        if value.startswith(("./", "../")) or (key == "preferences" and "://" not in value):
            found.append((field, holder, key, "", value))
    return found


def rebase(data: dict[str, Any], file: Path, preset: bool, rl_stages: tuple[str, ...]) -> dict[str, Any]:
    """``data``, read from ``file``, with its relative local paths (``_local_paths``) read next to it.

    A user's config file (``--config``): relative to its folder; a missing file fails naming its
    field. A preset: relative to its folder, else to the folder holding its ``configs/`` (the repo
    root for the shipped presets); a path found in neither stays as written, relative to the current
    directory (``data/gsm8k/…``, which the README has users create there). A path the current
    directory finds as it is written stays so (a config sent to a worker that runs in the repo, as
    the images do, stays valid there); any other becomes absolute. ``--set`` values are not rebased:
    they are relative to the current directory."""
    folder = Path(file).resolve().parent
    for field, holder, key, prefix, path in _local_paths(data, rl_stages):
        if Path(path).expanduser().is_absolute():
            continue
        bases = (folder, folder.parent) if preset else (folder,)
        target = next((Path(os.path.normpath(b / path)) for b in bases if os.path.exists(b / path)), None)
        if target is None and not preset:
            raise ConfigError(f"{field}: {os.path.normpath(folder / path)}: no such file (a relative path "
                              f"in {file} is read next to it)")
        if target is not None and Path(path).resolve() != target.resolve():
            holder[key] = prefix + str(target)
    return data
