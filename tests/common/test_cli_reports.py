"""What the command line prints for people: a model test or a validation as a short summary
(``--details`` for bioimageio.core's full report, without conda noise), and a hint when no server
answers."""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from modelrunner.app.cli import main
from modelrunner.client import ModelInfo
from modelrunner.serving import RunningServer


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_model_test_prints_one_line_per_check_and_the_tolerance(
    server: RunningServer, example_nuclei: ModelInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    short = example_nuclei.id[:12]
    code, out, _ = _run(
        capsys, "test", short, "--weight-format", "torchscript", "--server", server.address
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"model test of {short}: passed"
    assert (
        "  ok    Reproduce test outputs from test inputs (torchscript) [weights.torchscript]"
        in lines
    )
    assert (
        "        output 'probability': all elements agree with expected values "
        "(rtol 1.00e-03, atol 1.00e-03)"
    ) in lines
    assert "conda" not in out
    assert len(lines) < 20


def test_model_test_details_is_the_full_report_without_conda(
    server: RunningServer, example_nuclei: ModelInfo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(
        capsys,
        "test",
        example_nuclei.id[:12],
        "--weight-format",
        "torchscript",
        "--details",
        "--server",
        server.address,
    )
    assert code == 0
    assert "Reproduce test outputs from test inputs (torchscript)" in out
    assert "| status" in out  # bioimageio.core's markdown tables
    assert "conda compare" not in out and "Conda Environment" not in out


def test_validation_summary_names_the_failed_check(
    server: RunningServer,
    example_model: Callable[[str], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    broken = tmp_path / "bioimageio.yaml"
    rdf = example_model("nuclei") / "rdf.yaml"
    broken.write_text(rdf.read_text().replace("type: batch", "type: bat"))
    code, out, _ = _run(
        capsys, "validate", str(broken), "--server", server.address, "--no-io-checks"
    )
    assert code == 1
    assert out.splitlines()[0] == f"validation of {broken}: failed"
    assert "  FAIL  " in out and "error: " in out


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["models"], ["describe", "abc"], ["info"]])
def test_no_server_says_how_to_start_one(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{_closed_port()}"
    code, out, err = _run(capsys, *command, "--server", address)
    assert code == 1 and out == ""
    # one line: what to do, not gRPC's "ipv4:127.0.0.1:PORT: Failed to connect" first
    assert err == (
        f"error (UNAVAILABLE): no modelrunner server answers at {address}: start one with "
        "`modelrunner serve` (in another terminal, or as a service), or name a running one with "
        "--server HOST:PORT or $MODELRUNNER_SERVER\n"
    )


def test_other_unavailable_errors_get_no_start_hint(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The hint is for a server that is not there; a server that answers gets none."""
    code, _, err = _run(capsys, "describe", "0123456789abcdef", "--server", server.address)
    assert code == 1 and "modelrunner serve" not in err


def test_output_piped_into_head_ends_quietly(
    server: RunningServer, example_nuclei: ModelInfo
) -> None:
    """`modelrunner describe ID | head -1`: the reader closes the pipe early; no traceback."""
    command = [
        sys.executable,
        "-c",
        "import sys; from modelrunner.app.cli import main; sys.exit(main())",
    ]
    shell = " ".join(
        [
            *(shlex.quote(c) for c in command),
            "describe",
            example_nuclei.id[:12],
            "--server",
            server.address,
        ]
    )
    result = subprocess.run(
        ["bash", "-c", f"{shell} | true"],  # the reader is gone before anything is written
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == ""
    assert "Traceback" not in result.stderr and "BrokenPipeError" not in result.stderr
