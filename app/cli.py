"""``modelrunner``: the command line.

``serve`` starts the control service with one embedded runtime; ``runtime`` starts a runtime
alone; the other commands are clients of a running server (``--server``, default
``$MODELRUNNER_SERVER``, ``$MODELRUNNER_ADDRESS`` or ``localhost:50051``). Server settings come
from flags, then ``MODELRUNNER_*`` environment variables, then defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modelrunner.app.quiet_grpc_logs  # noqa: F401 - first: before anything loads gRPC
from modelrunner import __version__, errors
from modelrunner.app.cli_example_model import add_example_model_command
from modelrunner.app.cli_help import (
    DEVICE_HELP,
    SOURCE_HELP,
    WEIGHT_FORMAT_HELP,
    add_connection_flags,
)
from modelrunner.app.cli_predict import add_predict_command
from modelrunner.app.cli_status import add_status_command
from modelrunner.app.cli_tokens import add_token_commands
from modelrunner.app.server_address import (
    COMMAND_RETRY_S,
    DEFAULT_ADDRESS,
    address_from_environment,
    start_hint,
)
from modelrunner.tls_hints import (
    plaintext_refused_hint,
    server_certificate_hint,
    untrusted_certificate,
)

if TYPE_CHECKING:
    from modelrunner.client import ModelRunnerClient
    from modelrunner.settings import Settings
    from modelrunner.types import ValidationReport

logger = logging.getLogger("modelrunner")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        code = int(args.run(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is met inside the handlers below
        return code
    except KeyboardInterrupt:
        # Ctrl-C only: a CancelledError from the server (a call cut off by its shutdown, say)
        # is an error like any other, not the user's own cancel
        return _cancelled()
    except BrokenPipeError:
        # `modelrunner models | head`: the reader has what it wanted; say nothing more (and
        # keep Python from complaining about stdout again at exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except errors.ModelRunnerError as e:
        # no server there: what to do instead of gRPC's "ipv6:%5B::1%5D:50051: Failed to connect"
        print(f"error ({e.code.name}): {_hint(args, e) or e.message}", file=sys.stderr)
        return 1


def _cancelled() -> int:
    """Ctrl-C: the client cancelled its calls on the way out (the server stops their work);
    one line, the shell's code for SIGINT, no traceback."""
    print("cancelled", file=sys.stderr)
    return 130


_NOT_LISTENING = ("Connection refused",)
_CLOSED = "Socket closed"
"""What gRPC says of a server that accepted the connection and closed it: one that speaks TLS
to a client that does not."""


def _hint(args: argparse.Namespace, error: errors.ModelRunnerError) -> str:
    """What to say instead of an error whose fix is outside the command: no server at the
    address, or a server whose certificate this client does not trust."""
    server = getattr(args, "server", None)
    if not server or not isinstance(error, errors.UnavailableError):
        return ""
    if untrusted_certificate(error.message):
        return server_certificate_hint(server, error.message)
    if _CLOSED in error.message and not (getattr(args, "tls_ca", None) or getattr(args, "tls", 0)):
        return plaintext_refused_hint(server)
    if not any(text in error.message for text in _NOT_LISTENING):
        return ""
    return start_hint(server)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelrunner",
        description="Serve, validate, test and run bioimage.io models.",
    )
    parser.add_argument("--version", action="version", version=f"modelrunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="start the control service and an embedded runtime",
        description="Start the control service (gRPC, --port) and a runtime in the same "
        "process (Arrow Flight, --flight-port). Flags win over MODELRUNNER_* variables, which "
        "win over the defaults (common/settings.py).",
    )
    _server_flags(serve, control=True)
    serve.add_argument(
        "--no-runtime",
        action="store_true",
        help="the control service alone; runtimes register with `modelrunner runtime "
        "--control` (default: one embedded runtime)",
    )
    cluster = serve.add_argument_group("runtimes on a Ray cluster (docs/cluster.md)")
    cluster.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="run the runtimes as Ray actors: auto, HOST:6379, ray://HOST:10001, or local "
        "(a cluster on this machine; default: no Ray, one embedded runtime)",
    )
    cluster.add_argument(
        "--ray-gpu-runtimes",
        type=int,
        metavar="N",
        help="runtimes with one GPU each (default: one per GPU of the cluster)",
    )
    cluster.add_argument(
        "--ray-cpu-runtimes", type=int, default=0, metavar="N", help="CPU-only runtimes (default 0)"
    )
    cluster.add_argument(
        "--ray-gpu-resource",
        metavar="NAME",
        help="a custom Ray resource that stands for a GPU (default: GPU)",
    )
    cluster.add_argument(
        "--ray-max-runtimes",
        type=int,
        metavar="N",
        help="add runtimes while all are saturated, up to this many (default: no scaling)",
    )
    cluster.add_argument(
        "--ray-auth-token-file",
        metavar="FILE",
        type=Path,
        help="the Ray cluster's token when it uses Ray's token authentication (default: "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )
    serve.set_defaults(run=_serve)

    runtime = sub.add_parser(
        "runtime",
        help="start a runtime that registers with a control service",
        description="Start a runtime alone (Arrow Flight: inference and model tests) that "
        "registers with the control service at --control; the control service sends clients "
        "to it. Flags win over MODELRUNNER_* variables, which win over the defaults.",
    )
    runtime.add_argument(
        "--control",
        dest="control_address",
        metavar="HOST:PORT",
        help="the control service to register with, e.g. gpu-host:50051 (no default: this or "
        "$MODELRUNNER_CONTROL_ADDRESS is required)",
    )
    _server_flags(runtime, control=False)
    runtime.set_defaults(run=_runtime)

    add_token_commands(sub)
    add_status_command(sub, _client_flags, _client)

    models = sub.add_parser("models", help="list the models on the server")
    _client_flags(models)
    models.set_defaults(run=_models)

    add = sub.add_parser("add", help="add a model (path, .zip, URL or bioimage.io id)")
    _client_flags(add)
    add.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    add.add_argument(
        "--upload",
        action="store_true",
        help="upload a local package even to a server on this host (default: the server reads "
        "it where it is when allowed to, else it is uploaded)",
    )
    add.set_defaults(run=_add)

    describe = sub.add_parser("describe", help="show a model's metadata")
    _client_flags(describe)
    describe.add_argument(
        "model",
        metavar="MODEL",
        help="model id (or a unique prefix), or a package path (added first)",
    )
    describe.set_defaults(run=_describe)

    validate = sub.add_parser("validate", help="validate a model description (exit 1 if invalid)")
    _client_flags(validate)
    validate.add_argument("source", metavar="SOURCE", help=SOURCE_HELP)
    validate.add_argument(
        "--no-io-checks",
        action="store_true",
        help="check the description alone, not the files it names (default: check them)",
    )
    validate.add_argument(
        "--upload",
        action="store_true",
        help="upload a local package even to a server on this host (default: as for add)",
    )
    validate.add_argument(
        "--details",
        action="store_true",
        help="print bioimageio.core's full report (default: a summary)",
    )
    validate.set_defaults(run=_validate)

    remove = sub.add_parser("remove", help="remove a model from the server")
    _client_flags(remove)
    remove.add_argument("model", metavar="MODEL", help="model id (or a unique prefix)")
    remove.set_defaults(run=_remove)

    publish = sub.add_parser("publish", help="make a model visible in every workspace (admin role)")
    _client_flags(publish)
    publish.add_argument("model", metavar="MODEL", help="model id (or a unique prefix)")
    publish.add_argument(
        "--withdraw",
        action="store_true",
        help="make it visible only in the workspaces that added it again",
    )
    publish.set_defaults(run=_publish)

    info = sub.add_parser("info", help="server versions, devices and runtimes")
    _client_flags(info)
    info.set_defaults(run=_info)

    test = sub.add_parser(
        "test", help="run a model's bioimage.io test on the server (exit 1 if it fails)"
    )
    _client_flags(test)
    test.add_argument(
        "model",
        metavar="MODEL",
        help="model id (or a unique prefix), or a package path (added first)",
    )
    test.add_argument("--weight-format", metavar="FORMAT", help=WEIGHT_FORMAT_HELP)
    test.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    test.add_argument(
        "--details",
        action="store_true",
        help="print bioimageio.core's full report (default: a summary)",
    )
    test.set_defaults(run=_test)

    add_predict_command(sub)
    add_example_model_command(sub)
    return parser


def _server_flags(p: argparse.ArgumentParser, *, control: bool) -> None:
    """A server's flags; ``control``: it runs a control service (``serve``), else a runtime
    alone (``runtime``), whose interface --host names."""
    if control:
        p.add_argument(
            "--host",
            metavar="HOST",
            help="interface the control service listens on, and the runtime unless "
            "--flight-host (default 127.0.0.1; another needs --auth and TLS, or --insecure)",
        )
        p.add_argument(
            "--port",
            type=int,
            metavar="PORT",
            help="control service port (default 50051; 0: any free port)",
        )
    else:
        p.add_argument(
            "--host",
            metavar="HOST",
            help="interface the runtime listens on, unless --flight-host (default 127.0.0.1; "
            "another needs --auth and TLS, or --insecure)",
        )
    p.add_argument(
        "--flight-host",
        metavar="HOST",
        help="interface the runtime's Arrow Flight server listens on (default: --host)",
    )
    p.add_argument(
        "--flight-port",
        type=int,
        metavar="PORT",
        help="the runtime's Arrow Flight port (default 8815; 0: any free port)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="model cache and token file (default ~/.cache/modelrunner)",
    )
    p.add_argument(
        "--device",
        metavar="DEVICE",
        help="where models run unless a call says: cpu, cuda or cuda:N (default: cuda if "
        "available, else cpu)",
    )
    p.add_argument(
        "--log-level",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING or ERROR (default INFO)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="publish Prometheus metrics on this port, for `modelrunner status` and Grafana "
        "(0: any free port; default: none)",
    )
    p.add_argument(
        "--metrics-host",
        metavar="HOST",
        help="interface the metrics endpoint listens on (default 127.0.0.1)",
    )
    security = p.add_argument_group("security (docs/security.md)")
    security.add_argument(
        "--auth",
        action="store_true",
        default=None,
        help="require a token on every call (`modelrunner token create`; default: off, "
        "loopback only)",
    )
    security.add_argument(
        "--tls-cert",
        dest="tls_cert_file",
        type=Path,
        metavar="PEM",
        help="this host's certificate (chain), for TLS on both planes (default: no TLS)",
    )
    security.add_argument(
        "--tls-key",
        dest="tls_key_file",
        type=Path,
        metavar="PEM",
        help="the private key of --tls-cert (needed with it; default: none)",
    )
    security.add_argument(
        "--tls-ca",
        dest="tls_ca_file",
        type=Path,
        metavar="PEM",
        help="certificate of the CA that signed --tls-cert (your facility's or a private "
        "one): the runtime and the control service verify each other with it (default: the "
        "system's roots, which trust public CAs only)",
    )
    security.add_argument(
        "--tls-client-ca",
        dest="tls_client_ca_file",
        type=Path,
        metavar="PEM",
        help="mutual TLS: clients must present a certificate signed by this CA (default: off)",
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow a non-loopback --host without --auth and TLS (default: refused)",
    )


def _client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=address_from_environment() or DEFAULT_ADDRESS,
        help=f"the server's control service (default $MODELRUNNER_SERVER, $MODELRUNNER_ADDRESS "
        f"or {DEFAULT_ADDRESS})",
    )
    add_connection_flags(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Flags override ``MODELRUNNER_*`` variables, which override defaults."""
    from modelrunner.settings import Settings

    names = (
        "host",
        "port",
        "flight_host",
        "flight_port",
        "cache_dir",
        "device",
        "log_level",
        "metrics_port",
        "metrics_host",
        "control_address",
        "auth",
        "insecure",
        "tls_cert_file",
        "tls_key_file",
        "tls_ca_file",
        "tls_client_ca_file",
        "ray_auth_token_file",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return Settings(**overrides)


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _serve(args: argparse.Namespace) -> int:
    from modelrunner.serving import serve_forever

    settings = settings_from_args(args)
    _configure_logging(settings)
    if args.ray:
        from modelrunner.cluster.ray_serving import RayPlan, serve_with_ray

        plan = RayPlan(
            args.ray,
            cpu_runtimes=args.ray_cpu_runtimes,
            gpu_runtimes=args.ray_gpu_runtimes,
            gpu_resource=args.ray_gpu_resource,
            max_runtimes=args.ray_max_runtimes,
        )
        serve_with_ray(settings, plan)
        return 0
    serve_forever(settings, with_runtime=not args.no_runtime)
    return 0


def _runtime(args: argparse.Namespace) -> int:
    from modelrunner.serving import run_runtime_forever

    settings = settings_from_args(args)
    _configure_logging(settings)
    if not settings.control_address:
        raise errors.InvalidArgumentError(
            "modelrunner runtime needs --control (or MODELRUNNER_CONTROL_ADDRESS)"
        )
    run_runtime_forever(settings)
    return 0


def _client(args: argparse.Namespace) -> ModelRunnerClient:
    from modelrunner.client import ModelRunnerClient

    tls = getattr(args, "tls_ca", None) or getattr(args, "tls", False)
    return ModelRunnerClient(
        args.server, token=getattr(args, "token", None), tls=tls, retry_s=COMMAND_RETRY_S
    )


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _models(args: argparse.Namespace) -> int:
    from modelrunner.app.cli_output import model_table

    with _client(args) as client:
        models = client.list_models()
    if args.json:
        _print_json([m.model_dump(mode="json") for m in models])
    else:
        print(model_table(models))
    return 0


def _add(args: argparse.Namespace) -> int:
    from modelrunner.app.cli_output import model_summary

    with _client(args) as client:
        info = client.add_model(args.source, upload=args.upload or None, progress=not args.json)
    if args.json:
        _print_json(info.model_dump(mode="json"))
    else:
        print(model_summary(info))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from modelrunner.app.cli_output import model_details

    with _client(args) as client:
        info = client.describe(_model_id(client, args.model))
    if args.json:
        _print_json(info.model_dump(mode="json"))
    else:
        print(model_details(info))
    return 0


def _validate(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.validate(
            args.source, perform_io_checks=not args.no_io_checks, upload=args.upload or None
        )
    _print_report(args, report, f"validation of {args.source}")
    return 0 if report.passed else 1


def _print_report(args: argparse.Namespace, report: ValidationReport, title: str) -> None:
    from modelrunner.app.report_summary import report_summary

    if args.json:
        _print_json(report.model_dump(mode="json"))
    elif args.details and report.markdown:
        print(report.markdown)
    else:
        print(report_summary(report, title))


def _remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        removed = client.remove_model(args.model)
    waited = removed.calls_in_flight
    note = f"; waited for {waited} prediction(s) in flight" if waited else ""
    print(f"removed {args.model}{note}")
    return 0


def _publish(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.publish_model(args.model, not args.withdraw)
    print(f"{'withdrew' if args.withdraw else 'published'} {args.model}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from modelrunner.app.cli_output import server_info_text

    with _client(args) as client:
        info = client.server_info()
    if args.json:
        _print_json(info.model_dump(mode="json"))
    else:
        print(server_info_text(info))
    return 0


def _model_id(client: ModelRunnerClient, model: str) -> str:
    """A package path is added first; anything else is taken as a model id."""
    if Path(model).exists():
        return client.add_model(model).id
    return model


def _test(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.test(_model_id(client, args.model), args.weight_format, device=args.device)
    _print_report(args, report, f"model test of {args.model}")
    return 0 if report.passed else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
