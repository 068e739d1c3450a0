"""``finephrase prompts ...`` subcommands (registered by finephrase.cli)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("prompts", help="list, show, render, validate, push and pull prompt files")
    psub = p.add_subparsers(dest="prompts_command", required=True)

    def cmd_list(args) -> int:
        from rich.console import Console
        from rich.table import Table

        from finephrase.prompts import list_packaged_prompts

        table = Table(show_header=True)
        for col in ("prompt", "version", "suits", "sha256", "description"):
            table.add_column(col)
        for pr in list_packaged_prompts(args.set):
            table.add_row(pr.ref, pr.version, pr.suits, pr.sha256[:12], pr.description[:70])
        Console().print(table)
        return 0

    ls = psub.add_parser("list", help="list packaged prompts")
    ls.add_argument("--set")
    ls.set_defaults(func=cmd_list)
