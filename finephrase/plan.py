"""The plan: a recipe resolved once, before anything runs, and read by every later part.

``resolve(recipe)`` does the checks that need the file system (source files, models, eval sets, endpoints files),
resolves the prompts as the recipe runs them (``Recipe.apply``: a recipe-level ``context`` overrides the prompt's)
and the classifier and language-ID models, and returns a :class:`Plan`. A run saves it as
``OUTPUT/.finephrase/plan.json`` when it starts (:func:`save_plan`); the stages, the end of the run, the card, the
HTML report and the push read it back (:func:`load_plan`) and never the recipe's YAML again.

Imports: ``finephrase.recipe`` (the configuration), ``finephrase.prompts`` (the one resolver), ``finephrase.redact``,
``finephrase.quality.models`` (a classifier's local path) and ``finephrase.errors``. Nothing of the pipeline,
the inference layer or the report.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from finephrase.errors import NoPlanError, PromptError, RecipeError
from finephrase.prompts import Prompt, resolve_prompts
from finephrase.recipe import Recipe, parse_recipe
from finephrase.redact import recipe_secret_values, redact_secrets

PLAN_FILE = os.path.join(".finephrase", "plan.json")


@dataclass
class Plan:
    """Everything a run needs that is worked out from its recipe, worked out once."""

    recipe: Recipe
    prompts: list[Prompt]  # as the recipe runs them (Recipe.apply)
    source_files: list[str] = field(default_factory=list)  # local sources: the files the readers will read
    classifiers: dict[str, str] = field(default_factory=dict)  # quality classifier name -> local path (a Hub
    # classifier is downloaded by resolve); one entry for `filters.quality.model`, one per ensemble member

    @property
    def quality_model(self) -> str | None:
        """The one quality classifier's local path (``filters.quality.model``), None for an ensemble or none."""
        q = self.recipe.filters.quality
        return self.classifiers[q.classifiers[0].name] if q and q.ensemble is None else None

    @property
    def quality_label(self) -> str:
        q = self.recipe.filters.quality
        return q.label if q else "hq"

    @property
    def language_model(self) -> str | None:
        """The language-ID model file, or None for the packaged lid.176 (``model: auto``) or no language filter."""
        lang = self.recipe.filters.language
        return lang.model if lang and lang.model != "auto" else None

    def prompt(self, name: str) -> Prompt:
        return next(p for p in self.prompts if p.name == name)

    def to_dict(self) -> dict:
        return {"recipe": self.recipe.model_dump(mode="json"), "recipe_path": self.recipe.path,
                "recipe_text": self.recipe.raw_text,
                "prompts": [dataclasses.asdict(p) for p in self.prompts],
                "prompt_sha256": {p.name: p.sha256 for p in self.prompts},
                "source_files": self.source_files, "classifiers": self.classifiers}


def recipe_prompts(recipe: Recipe) -> list[Prompt]:
    """The recipe's prompts as it runs them: each reference resolved by finephrase.prompts' one resolver (a
    packaged set/name, a file relative to the recipe, hf://...) and ``apply``-ed. A failure raises the
    PromptError, its ``index`` naming the reference."""
    base = Path(recipe.path).parent if recipe.path else None
    return [recipe.apply(p) for p in resolve_prompts(recipe.prompts, base_dir=base)]


def source_files(source) -> list[str]:
    """The files a local source (``SourceConfig``: jsonl / parquet, or a hub source with a local path) reads."""
    if not source.path:
        return []
    if os.path.isfile(source.path):
        return [source.path]
    return sorted(f for f in glob.glob(os.path.join(source.path, source.default_glob), recursive=True)
                  if not os.path.isdir(f))  # a dangling link stays: the check says it is unreadable


def _error(recipe: Recipe, key: str, message: str) -> RecipeError:
    return RecipeError(f"{recipe.path or '<recipe>'}: {key}: {message}")


def _check_source(recipe: Recipe) -> list[str]:
    src = recipe.source
    if not (src.kind in ("jsonl", "parquet") or (src.kind == "hub" and src.path)):
        return []
    if not os.path.exists(src.path):
        raise _error(recipe, "source.path", f"{src.path!r} does not exist")
    files = source_files(src)
    if src.kind != "hub" and not files:
        raise _error(recipe, "source.path", f"no files matching {src.default_glob!r} under {src.path!r}")
    for f in files[:50]:
        if not os.access(f, os.R_OK):
            raise _error(recipe, "source.path", f"{f!r} is not readable")
    return files


def _classifiers(recipe: Recipe) -> dict[str, str]:
    """The quality classifiers' local paths, by name (a Hub model is downloaded and cached here, before anything
    runs); a fastText threshold above 1 is an error (a probability)."""
    q = recipe.filters.quality
    if not q:
        return {}
    from finephrase.errors import ClassifierNotFound
    from finephrase.quality.models import resolve_classifier
    from finephrase.quality.scorers import is_transformers_model

    out = {}
    for i, c in enumerate(q.classifiers):
        key = "filters.quality.model" if q.ensemble is None else f"filters.quality.ensemble[{i}].model"
        try:
            out[c.name] = resolve_classifier(c.model)
        except ClassifierNotFound as e:
            raise _error(recipe, key, str(e)) from None
    if q.ensemble is None and q.threshold > 1 and not is_transformers_model(next(iter(out.values()))):
        raise _error(recipe, "filters.quality.threshold", f"{q.threshold} > 1: a fastText score is a probability")
    return out


def _check_files(recipe: Recipe) -> None:
    lang = recipe.filters.language
    if lang and lang.model != "auto" and not os.path.isfile(lang.model):
        raise _error(recipe, "filters.language.model", f"fastText LID model {lang.model!r} not found")
    decont = recipe.decontamination
    for i, e in enumerate(decont.eval_sets if decont else []):
        if e.path and not os.path.exists(e.path):
            raise _error(recipe, f"decontamination.eval_sets[{i}].path", f"{e.path!r} does not exist")
    g = recipe.generator
    if g.endpoints_file and not os.path.exists(g.endpoints_file) and not g.endpoints:
        # a server job may create it later; only an error when it is the only source of endpoints and its folder is missing
        if not os.path.isdir(os.path.dirname(os.path.abspath(g.endpoints_file))):
            raise _error(recipe, "generator.endpoints_file", f"folder of {g.endpoints_file!r} does not exist")
    if g.gguf and not os.path.isfile(g.gguf):
        raise _error(recipe, "generator.gguf", f"GGUF file {g.gguf!r} not found")
    src = recipe.mix.source if recipe.mix is not None else None
    remote = src is not None and src.path and src.path.startswith("hf://")  # read by datatrove from the Hub
    if src is not None and src.kind in ("jsonl", "parquet") and not remote and not os.path.exists(src.path):
        raise _error(recipe, "mix.source.path", f"{src.path!r} does not exist")


def _check_prompt_names(recipe: Recipe, prompts: list[Prompt]) -> None:
    known = {p.name for p in prompts}
    named = []  # (key, names used there)
    if recipe.mix is not None:
        named.append(("mix.per_prompt", set(recipe.mix.per_prompt)))
    r = recipe.routing
    if r is not None and r.buckets is not None:
        named += [(f"routing.buckets[{i}].prompts", set(b.prompts)) for i, b in enumerate(r.buckets)]
        named.append(("routing.unscored", set(r.unscored)))
    for key, names in named:
        unknown = sorted(names - known)
        if unknown:
            raise _error(recipe, key, f"{', '.join(unknown)}: not a prompt of this recipe "
                         f"(prompts: {', '.join(p.name for p in prompts)})")
    configs = [p.config_name for p in prompts]
    if {"all", "mix"} & set(configs) or len(set(configs)) != len(configs):
        raise _error(recipe, "prompts", f"prompt names must be unique and not 'all'/'mix': {configs}")


def resolve(recipe: Recipe) -> Plan:
    """The recipe checked against the file system and resolved (see the module's docstring); RecipeError naming
    the file and the key otherwise."""
    files = _check_source(recipe)
    classifiers = _classifiers(recipe)
    _check_files(recipe)
    try:
        prompts = recipe_prompts(recipe)
    except PromptError as e:
        raise _error(recipe, f"prompts[{e.index}]", str(e)) from None
    _check_prompt_names(recipe, prompts)
    return Plan(recipe, prompts, files, classifiers)


def save_plan(plan: Plan, output: str) -> str:
    path = os.path.join(output, PLAN_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    text = json.dumps(plan.to_dict(), indent=1, ensure_ascii=False)
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(redact_secrets(text, recipe_secret_values(plan.recipe)))  # secrets never reach a file
    os.replace(tmp, path)
    return path


def load_plan(output: str) -> Plan:
    """The plan a run saved in ``output`` (prompts exactly as the run used them)."""
    path = os.path.join(output, PLAN_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NoPlanError(f"{output}: no {PLAN_FILE} (not an output of `finephrase run` or `finephrase launch`)\n"
                          "fix: give the output folder of a run, or run the recipe again into it") from None
    recipe = parse_recipe(data["recipe"], data.get("recipe_path") or path, data.get("recipe_text"))
    prompts = [Prompt(**p) for p in data["prompts"]]
    changed = [p.name for p in prompts if data["prompt_sha256"].get(p.name) != p.sha256]
    if changed:
        raise NoPlanError(f"{path}: prompts {changed} do not match their saved sha256 (the file was edited)\n"
                          "fix: run the recipe again into this folder")
    return Plan(recipe, prompts, data.get("source_files") or [], data.get("classifiers") or {})
