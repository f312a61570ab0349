"""``modelrunner token create|list|revoke``: the tokens a server accepts, edited in its token file
on the server's host (``--cache-dir``, or ``MODELRUNNER_AUTH_TOKENS_FILE``). A running server
sees the change at its next call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner.auth import DEFAULT_WORKSPACE, Role

if TYPE_CHECKING:
    from modelrunner.entry_server.token_store import TokenStore


def add_token_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = sub.add_parser("token", help="create, list or revoke the server's access tokens")
    commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    create = commands.add_parser("create", help="create a token and print it (shown once)")
    create.add_argument("name", help="who or what holds it, e.g. alice or gpu-runtime-1")
    create.add_argument(
        "--role",
        choices=[r.value for r in Role if r is not Role.CONTROL],
        default=Role.READ.value,
        help="read: list, describe, predict, test; write: also add and remove models; "
        "admin: everything; runtime: a runtime's credential (default read)",
    )
    create.add_argument(
        "--workspace",
        metavar="NAME",
        default=DEFAULT_WORKSPACE,
        help=f"the models it sees and adds (default {DEFAULT_WORKSPACE!r})",
    )
    create.set_defaults(run=_create)

    listing = commands.add_parser("list", help="list tokens (names, roles, workspaces)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(run=_list)

    revoke = commands.add_parser("revoke", help="revoke a token by name or id")
    revoke.add_argument("name", help="the token's name or id")
    revoke.set_defaults(run=_revoke)

    for p in (create, listing, revoke):
        p.add_argument(
            "--cache-dir",
            type=Path,
            metavar="DIR",
            help="the server's cache, whose auth/tokens.json is the token file (default "
            "$MODELRUNNER_CACHE_DIR or ~/.cache/modelrunner)",
        )
        p.add_argument(
            "--tokens-file",
            type=Path,
            metavar="FILE",
            help="the token file itself (default: auth/tokens.json in the cache)",
        )


def _store(args: argparse.Namespace) -> TokenStore:
    from modelrunner.entry_server.token_store import TokenStore
    from modelrunner.settings import Settings

    overrides: dict[str, Any] = {}
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    if args.tokens_file is not None:
        overrides["auth_tokens_file"] = args.tokens_file
    return TokenStore(Settings(**overrides).effective_tokens_file)


def _create(args: argparse.Namespace) -> int:
    store = _store(args)
    token, record = store.create(args.name, Role(args.role), args.workspace)
    print(token)
    print(
        f"token {record.name!r} ({record.role}, workspace {record.workspace!r}, id "
        f"{record.token_id}) added to {store.path}; it is shown only now",
        file=sys.stderr,
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    import json

    records = _store(args).records()
    if args.json:
        print(
            json.dumps(
                [
                    {k: getattr(r, k) for k in ("token_id", "name", "role", "workspace")}
                    | {"created_at": r.created_at}
                    for r in records
                ],
                indent=2,
            )
        )
        return 0
    rows = [("ID", "NAME", "ROLE", "WORKSPACE", "CREATED")] + [
        (r.token_id, r.name, r.role, r.workspace, r.created_at) for r in records
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace) -> int:
    record = _store(args).revoke(args.name)
    print(f"revoked token {record.name!r} ({record.token_id})")
    return 0
