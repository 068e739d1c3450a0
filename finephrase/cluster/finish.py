"""The job after a launched run's last stage: the run report, ``recipe.yaml``, the dataset card and the optional
Hub push (as ``finephrase run`` does at its end), then the run's server jobs are cancelled (GPUs released).

``python -m finephrase.cluster.finish OUTPUT RECIPE [--push-to REPO_ID]`` (what ``finephrase launch`` submits)."""

from __future__ import annotations

import argparse
import sys
import time

from finephrase.cluster import slurm
from finephrase.cluster.jobs import load_ledger
from finephrase.cluster.templates import model_for, server_kind
from finephrase.plan import load_plan


def finish(output: str, recipe_path: str, push_to: str | None = None) -> str:
    """Report, recipe copy, card (and push); returns the card's path. Servers are released whatever happens."""
    ledger = load_ledger(output)
    try:
        return _finish(output, recipe_path, push_to)
    finally:
        if ledger is not None:
            slurm.scancel(ledger.server_ids())


def _finish(output: str, recipe_path: str, push_to: str | None) -> str:
    from finephrase.report import build_report
    from finephrase.report.finish import finish_output

    plan = load_plan(output)  # saved by `finephrase launch`: the prompts as the run ran them
    recipe, prompts = plan.recipe, plan.prompts
    ledger = load_ledger(output)
    last = ledger.launches[-1] if ledger and ledger.launches else None
    stages = [s.name for s in last.stages] if last else []
    kind = server_kind(recipe)
    generator = {"server": recipe.generator.server, "launched": kind, "server_jobs": len(last.servers) if last else 0,
                 "model": model_for(recipe, kind)[0] if recipe.cluster and recipe.cluster.servers else recipe.generator.model}
    start = ledger.launches[0].time if ledger and ledger.launches else time.time()
    report = build_report(output, stages, prompts, generator=generator, wall_time_s=round(time.time() - start, 1),
                          tasks=last.stages[0].tasks if last and last.stages else None)
    path = finish_output(output, plan, report)  # report.json, recipe.yaml, card, report.html
    if push_to:
        from finephrase.hub import push_output

        push_output(output, push_to, private=recipe.output.private)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finephrase.cluster.finish")
    p.add_argument("output")
    p.add_argument("recipe")
    p.add_argument("--push-to")
    args = p.parse_args(argv)
    path = finish(args.output, args.recipe, args.push_to)
    print(f"finephrase: card written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
