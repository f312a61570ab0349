"""``modelrunner token create|list|revoke`` on a server's token file, and a server started
with ``--auth`` accepting what it printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelrunner import errors
from modelrunner.app.cli import main
from modelrunner.auth import Role
from modelrunner.entry_server.token_store import TokenStore


def _create(capsys: pytest.CaptureFixture[str], cache: Path, *args: str) -> str:
    assert main(["token", "create", *args, "--cache-dir", str(cache)]) == 0
    return capsys.readouterr().out.strip()


def test_create_list_and_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = _create(capsys, tmp_path, "alice", "--role", "write", "--workspace", "lab-a")
    assert token.startswith("mr_")
    store = TokenStore(tmp_path / "auth" / "tokens.json")
    identity = store.authenticate(token)
    assert identity is not None and identity.role is Role.WRITE and identity.workspace == "lab-a"

    assert main(["token", "list", "--json", "--cache-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["role"], t["workspace"]) for t in listed] == [("alice", "write", "lab-a")]
    assert token not in json.dumps(listed)  # a listing never shows a secret

    assert main(["token", "revoke", "alice", "--cache-dir", str(tmp_path)]) == 0
    assert store.authenticate(token) is None


def test_a_token_name_is_taken_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _create(capsys, tmp_path, "alice")
    assert main(["token", "create", "alice", "--cache-dir", str(tmp_path)]) == 1
    assert "exists already" in capsys.readouterr().err


@pytest.mark.parametrize("workspace", ["../etc", "UPPER", "", "a" * 65, "sp ace"])
def test_a_workspace_name_that_is_not_a_plain_name_is_refused(
    tmp_path: Path, workspace: str
) -> None:
    with pytest.raises(errors.InvalidArgumentError):
        TokenStore(tmp_path / "t.json").create("x", Role.READ, workspace)


def test_revoking_an_unknown_token_is_not_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "revoke", "nobody", "--cache-dir", str(tmp_path)]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
