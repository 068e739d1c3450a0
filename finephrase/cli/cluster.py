"""``finephrase launch``, ``finephrase status`` and ``finephrase stop``: a thin layer over :mod:`finephrase.cluster`."""

from __future__ import annotations

import json

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def cmd_launch(args) -> int:
    from finephrase.errors import RunStopped
    from finephrase.cluster.launch import launch
    from finephrase.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    push_to = None
    if args.push_to is not None:
        from finephrase.hub import check_push_access, push_repo

        push_to = recipe.output.hub_repo = push_repo(args.push_to, recipe.output.hub_repo)  # the card names it
        check_push_access(push_to)
    try:
        result = launch(recipe, executor=args.executor, servers=args.servers, output=args.output, tasks=args.tasks,
                        limit=args.limit, push_to=push_to, workers=args.workers)
    except RunStopped as e:  # `finephrase stop` (SIGTERM) or Ctrl-C on a Ray launch: not an error, one line
        Console(stderr=True).print(e.line, soft_wrap=True, highlight=False, markup=False)
        return e.exit_code
    if args.executor == "local":
        console.print(f"done: {result.output}", soft_wrap=True)
        return 0
    reused = [s for s in result.servers if s not in result.new_servers]
    console.print(f"servers: {', '.join(result.new_servers) or '-'} submitted"
                  + (f", {', '.join(reused)} reused" if reused else ""), soft_wrap=True)
    for name, jobs in result.stages.items():
        console.print(f"  {escape(name)}: {', '.join(jobs) if jobs else ('ran' if args.executor == 'ray' else 'nothing left to run')}",
                      soft_wrap=True)
    if result.supervisor:
        console.print(f"server supervisor (starts the servers' work, replaces dead ones, releases them when rephrase "
                      f"ends): {result.supervisor}", soft_wrap=True)
    if result.finish:
        console.print(f"finish (report, card, releases the servers): {result.finish}")
    console.print(f"jobs: {result.ledger}\nfollow: finephrase status {result.output}   cancel: finephrase stop "
                  f"{result.output}", soft_wrap=True, highlight=False)
    return 0


def cmd_status(args) -> int:
    from finephrase.cluster.status import run_status

    st = run_status(args.run_dir, probe=not args.no_probe)
    if args.json:
        print(json.dumps(st.to_dict(), indent=1))
        return 0
    servers = ", ".join(f"{s.job} {s.state.lower()}" for s in st.servers) or "-"
    limit = f" of {st.replacement_limit}" if st.replacement_limit is not None else ""
    console.print(f"servers: {servers}; replicas registered {len(st.endpoints)}, healthy {len(st.healthy)}; "
                  f"replaced {st.servers_replaced}{limit}" + (f"; supervisor {st.supervisor.lower()}"
                                                              if st.supervisor else ""),
                  soft_wrap=True, highlight=False)
    table = Table(show_header=True)
    for col in ("stage", "tasks", "done", "running", "pending", "failed"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in st.stages:
        table.add_row(escape(s.name) + (" (blocked)" if s.blocked else ""), *map(str, (s.tasks, s.done, s.running,
                                                                                         s.pending, s.failed)))
    console.print(table)
    rate = f"{st.tokens_per_s or 0:.0f} tok/s overall" + (f", {st.tokens_per_s_now:.0f} now" if st.tokens_per_s_now
                                                           is not None else "")
    of = f" of {st.documents_in}" if st.documents_in is not None else ""
    console.print(f"rephrased: {st.documents}{of} documents, {st.tokens} tokens; {rate}; elapsed "
                  f"{_duration(st.elapsed_s)}, ETA {_duration(st.eta_s)}", highlight=False)
    if st.fleet:
        console.print(f"fleet: {st.fleet}", highlight=False, soft_wrap=True)
    if st.driver:
        console.print(f"ray driver: {st.driver}", highlight=False, soft_wrap=True)
    if st.complete or not st.driver:
        console.print("complete" if st.complete else f"finish job: {(st.finish or '-').lower()}", highlight=False)
    return 0


def cmd_stop(args) -> int:
    from finephrase.cluster.stop import stop_run
    from finephrase.errors import ClusterError

    stopped = stop_run(args.run_dir, timeout=args.timeout)
    if stopped.driver:
        console.print(f"ray driver: {stopped.driver}", soft_wrap=True, highlight=False)
    if stopped.slurm or not stopped.driver:
        console.print(f"cancelled: {', '.join(stopped.cancelled) or 'nothing was queued'}", soft_wrap=True)
    if stopped.left:
        raise ClusterError(f"still in the queue after {args.timeout:.0f}s: {', '.join(stopped.left)}\n"
                           "they are ending; check with `squeue -j " + ",".join(stopped.left) + "`")
    return 0


def register(sub) -> None:
    la = sub.add_parser("launch", help="run a recipe on a cluster: server jobs + the stages as Slurm job arrays (or Ray)")
    la.add_argument("recipe")
    la.add_argument("--executor", choices=["slurm", "ray", "local"], default="slurm")
    la.add_argument("--servers", type=int, help="server jobs (default: the recipe's cluster.servers)")
    la.add_argument("--output", help="output folder (default: the recipe's output.folder)")
    la.add_argument("--tasks", type=int, help="datatrove tasks per stage")
    la.add_argument("--limit", type=int, help="documents read per task")
    la.add_argument("--workers", type=int, help="ray/local: tasks run at once")
    la.add_argument("--push-to", metavar="REPO_ID", nargs="?", const="",
                    help="the finish job pushes the result to this Hub dataset repo (alone: the recipe's output.hub_repo)")
    la.set_defaults(func=cmd_launch)

    st = sub.add_parser("status", help="a launched run: servers, tasks per stage, documents and tokens, ETA")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true")
    st.add_argument("--no-probe", action="store_true", help="do not probe the replicas")
    st.set_defaults(func=cmd_status)

    sp = sub.add_parser("stop", help="stop a launched run: cancel every Slurm job it submitted (by id), end its Ray "
                        "driver (and so its Ray tasks)")
    sp.add_argument("run_dir")
    sp.add_argument("--timeout", type=float, default=120.0,
                    help="seconds to wait for the jobs to leave the queue, and for the Ray driver to end after "
                         "SIGTERM (then SIGKILL)")
    sp.set_defaults(func=cmd_stop)
