"""The dataset's ``configs`` as the card's YAML lists them: built here only, for the card written by a run and
for the card a push publishes.

One config per prompt (``data/<prompt>/*.parquet``), ``all`` (the default: every prompt config's files) and
``mix``. Configs of a repository that an earlier push published and that this output does not replace are
*kept*: they stay in the list, and the kept prompt configs are in ``all`` too.
"""

from __future__ import annotations

ALL = "all"
MIX = "mix"
SPECIAL_CONFIGS = (ALL, MIX)


def config_entry(name: str, paths) -> dict:
    """A ``configs`` entry: one ``train`` split made of ``paths`` (a glob or a list of globs)."""
    return {"config_name": name, "data_files": [{"split": "train", "path": paths}]}


def local_entry(name: str) -> dict:
    """The entry of a config this output wrote (``data/<name>/*.parquet``)."""
    return config_entry(name, f"data/{name}/*.parquet")


def config_paths(config: dict) -> list[str]:
    """The data_files patterns of a card ``configs`` entry, flattened."""
    df = config.get("data_files")
    out: list[str] = []
    items = df if isinstance(df, list) else [df]
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            p = item.get("path")
            out.extend(p if isinstance(p, list) else [p] if isinstance(p, str) else [])
    return out


def _without_default(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "default"}


def dataset_configs(local: list[dict], kept: list[dict] | None = None) -> list[dict]:
    """``all`` (default), this output's prompt configs, the kept prompt configs, then ``mix`` (this output's,
    else a kept one). ``local``: this output's entries (an ``all`` among them is rebuilt); ``kept``: entries of
    the remote card (those this output has, and ``all``, are dropped)."""
    local = [_without_default(c) for c in local if c.get("config_name") != ALL]
    names = {c["config_name"] for c in local}
    kept = [_without_default(c) for c in kept or [] if c.get("config_name") not in names | {ALL}]
    prompt_configs = [c for c in local + kept if c["config_name"] != MIX]
    mix = [c for c in local if c["config_name"] == MIX] or [c for c in kept if c["config_name"] == MIX]
    paths = list(dict.fromkeys(p for c in prompt_configs for p in config_paths(c)))
    configs = ([{**config_entry(ALL, paths), "default": True}] if paths else []) + prompt_configs + mix
    if configs and not any(c.get("default") for c in configs):
        configs[0]["default"] = True
    return configs


def kept_names(configs: list[dict], local: list[str]) -> list[str]:
    """The configs of ``configs`` that are neither ``all`` nor written by this output (``local``)."""
    return [c["config_name"] for c in configs if c["config_name"] not in {ALL, *local}]
