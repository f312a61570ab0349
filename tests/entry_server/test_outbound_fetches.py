"""Outbound fetches are safe (issue 10, item 4): URL sources, bioimage.io ids, the files of a
remote description and validation with io checks reach only public addresses unless
``fetch_allowed_networks`` allows more; redirects are checked hop by hop; errors do not tell
port states apart. Each test names what it attacks. No traffic leaves loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpcore
import httpx
import pytest

from modelrunner.entry_server.packages import fetch_policy
from modelrunner.errors import PermissionDeniedError
from tests.entry_server.conftest import FakeWeb, Reply, Running, ServerFactory
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    add_model,
    copy_package,
    edit_yaml,
    expect_rpc_error,
)
from tests.entry_server.test_package_contents import _validate

LOOPBACK: dict[str, Any] = {"fetch_allowed_networks": ["127.0.0.0/8"]}


def _not_allowed(url: str, host: str, via_redirect: bool = False) -> str:
    via = " (reached by a redirect)" if via_redirect else ""
    return (
        f"fetching {url} is not allowed: {host}{via} is not a public address, and the server "
        "fetches only from public addresses unless setting fetch_allowed_networks allows more"
    )


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the server's downloads attempt (host, port), recorded."""
    attempts: list[tuple[str, int]] = []
    real = httpcore.SyncBackend.connect_tcp

    def recording(self: httpcore.SyncBackend, host: str, port: int, **kwargs: Any) -> Any:
        attempts.append((host, port))
        return real(self, host, port, **kwargs)

    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", recording)
    return attempts


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names resolved to the given addresses (the real resolver for every other name)."""
    names: dict[str, list[str]] = {}
    real = socket.getaddrinfo

    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [
                (
                    socket.AF_INET6 if ":" in a else socket.AF_INET,
                    socket.SOCK_STREAM,
                    6,
                    "",
                    (a, port),
                )
                for a in names[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return names


# -- refused by default -------------------------------------------------------------------------


def test_a_url_on_loopback_is_refused_by_default(
    control: Running, web: FakeWeb, connections: list[tuple[str, int]]
) -> None:
    web.serve_file("/n2v.zip", CAREAMICS_ZIP)
    url = web.url("/n2v.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, "127.0.0.1")
    assert web.requests == [] and connections == []


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://[::1]:8080/model.zip", "::1"),
        ("http://0.0.0.0:8080/model.zip", "0.0.0.0"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/model.zip", "10.0.0.1"),
        ("http://172.16.5.4/model.zip", "172.16.5.4"),
        ("https://192.168.1.1/model.zip", "192.168.1.1"),
        ("http://100.64.0.1/model.zip", "100.64.0.1"),
        ("http://224.0.0.1/model.zip", "224.0.0.1"),
        ("http://[fc00::1]/model.zip", "fc00::1"),
        ("http://[fe80::1]/model.zip", "fe80::1"),
        ("http://[::ffff:127.0.0.1]/model.zip", "::ffff:127.0.0.1"),
        ("http://[2002:7f00:1::]/model.zip", "2002:7f00:1::"),  # 6to4 of 127.0.0.1
        ("http://[2002:a00:1::]/model.zip", "2002:a00:1::"),  # 6to4 of 10.0.0.1
        ("http://[fec0::1]/model.zip", "fec0::1"),  # IPv6 site-local
        ("http://127.1.2.3:9/model.zip", "127.1.2.3"),
    ],
)
def test_a_special_address_is_refused_before_any_connection(
    start_server: ServerFactory, connections: list[tuple[str, int]], url: str, host: str
) -> None:
    control = start_server(download_retries=0)
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, host)
    assert connections == []


def test_a_host_name_resolving_to_loopback_is_refused(
    control: Running, web: FakeWeb, connections: list[tuple[str, int]]
) -> None:
    web.serve_file("/n2v.zip", CAREAMICS_ZIP)
    url = f"http://localhost:{web.server.server_address[1]}/n2v.zip"
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, "localhost")
    assert web.requests == [] and connections == []


def test_a_name_with_one_public_and_one_private_address_is_refused(
    control: Running, fake_dns: dict[str, list[str]], connections: list[tuple[str, int]]
) -> None:
    """Which address a connection would use is not the client's to choose (DNS rebinding)."""
    fake_dns["mixed.example"] = ["93.184.216.34", "10.1.2.3"]
    url = "http://mixed.example/model.zip"
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, "mixed.example")
    assert connections == []


def test_the_connection_goes_to_the_checked_address_with_the_url_host_header(
    start_server: ServerFactory,
    web: FakeWeb,
    fake_dns: dict[str, list[str]],
    connections: list[tuple[str, int]],
) -> None:
    """The name is resolved once, checked, and the connection made to that address: a second
    answer of the resolver (a rebinding) is never asked for. The Host header stays the URL's."""
    port = web.server.server_address[1]
    fake_dns["models.example"] = ["127.0.0.1"]
    control = start_server(fetch_allowed_networks=["127.0.0.1/32"])
    web.serve_file("/n2v.zip", CAREAMICS_ZIP)
    result, _ = add_model(control.stub, url=f"http://models.example:{port}/n2v.zip")
    assert result.model.name == "tiny n2v"
    assert connections == [("127.0.0.1", port)]
    assert web.hosts == [f"models.example:{port}"]


def test_loopback_is_fetched_when_configured(
    start_server: ServerFactory, web: FakeWeb, connections: list[tuple[str, int]]
) -> None:
    control = start_server(fetch_allowed_networks=["127.0.0.1/32"])
    web.serve_file("/n2v.zip", CAREAMICS_ZIP)
    result, _ = add_model(control.stub, url=web.url("/n2v.zip"))
    assert result.created
    assert web.requests == ["/n2v.zip"]
    assert connections == [("127.0.0.1", web.server.server_address[1])]


def test_an_invalid_allowed_network_is_refused_at_startup(start_server: ServerFactory) -> None:
    with pytest.raises(ValueError, match="not-a-network"):
        start_server(fetch_allowed_networks=["not-a-network"])


# -- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://10.0.0.1/model.zip", "10.0.0.1"),
        ("http://[::1]/model.zip", "::1"),
    ],
)
def test_a_redirect_from_an_allowed_server_to_a_refused_address_is_refused(
    start_server: ServerFactory,
    web: FakeWeb,
    connections: list[tuple[str, int]],
    location: str,
    host: str,
) -> None:
    control = start_server(fetch_allowed_networks=["127.0.0.1/32"])
    web.serve("/model.zip", Reply(status=302, headers={"Location": location}))
    url = web.url("/model.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, host, via_redirect=True)
    assert web.requests == ["/model.zip"]
    assert {h for h, _ in connections} == {"127.0.0.1"}


def test_a_redirect_to_a_name_resolving_to_a_private_address_is_refused(
    start_server: ServerFactory,
    web: FakeWeb,
    fake_dns: dict[str, list[str]],
    connections: list[tuple[str, int]],
) -> None:
    fake_dns["intranet.example"] = ["10.9.9.9"]
    control = start_server(fetch_allowed_networks=["127.0.0.1/32"])
    web.serve("/a.zip", Reply(status=307, headers={"Location": "http://intranet.example/x"}))
    url = web.url("/a.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, "intranet.example", via_redirect=True)
    assert {h for h, _ in connections} == {"127.0.0.1"}


def test_a_redirect_to_a_file_url_is_refused(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK)
    web.serve("/model.zip", Reply(status=301, headers={"Location": "file:///etc/passwd"}))
    url = web.url("/model.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == f"fetching {url} is not allowed: it redirects to a URL that is not http(s)"


def test_a_redirect_loop_stops_at_the_hop_limit(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK, fetch_max_redirects=3)
    web.serve("/a", Reply(status=302, headers={"Location": "/b"}))
    web.serve("/b", Reply(status=302, headers={"Location": web.url("/a")}))
    url = web.url("/a")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidSourceError",
    )
    assert message == f"cannot download {url}: more than 3 redirects (setting fetch_max_redirects)"
    assert web.requests == ["/a", "/b", "/a", "/b"]


def test_redirects_within_the_limit_are_followed(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK, fetch_max_redirects=2)
    web.serve("/old.zip", Reply(status=301, headers={"Location": "/moved.zip"}))
    web.serve("/moved.zip", Reply(status=303, headers={"Location": web.url("/n2v.zip")}))
    web.serve_file("/n2v.zip", CAREAMICS_ZIP)
    result, _ = add_model(control.stub, url=web.url("/old.zip"))
    assert result.model.name == "tiny n2v"
    assert web.requests == ["/old.zip", "/moved.zip", "/n2v.zip"]


# -- no port-state oracle -------------------------------------------------------------------------


@pytest.fixture
def odd_ports() -> Iterator[dict[str, int]]:
    """Loopback ports: closed, silent (accepts, never answers), hanging up at once, and
    answering something that is not HTTP (an SSH banner)."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    ports = {"closed": closed.getsockname()[1]}
    closed.close()
    servers: list[socket.socket] = []
    stop = threading.Event()

    def serve(kind: str) -> None:
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.05)
        servers.append(server)
        ports[kind] = server.getsockname()[1]
        held: list[socket.socket] = []

        def loop() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    continue
                if kind == "hang-up":
                    conn.close()
                elif kind == "ssh":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                    conn.close()
                else:
                    held.append(conn)
            for conn in held:
                conn.close()

        threading.Thread(target=loop, daemon=True).start()

    for kind in ("silent", "hang-up", "ssh"):
        serve(kind)
    yield ports
    stop.set()
    for server in servers:
        server.close()


def test_closed_silent_and_non_http_ports_give_the_same_error(
    start_server: ServerFactory, odd_ports: dict[str, int]
) -> None:
    control = start_server(**LOOPBACK, download_timeout_s=0.3, download_retries=1)
    messages = {}
    for kind, port in odd_ports.items():
        url = f"http://127.0.0.1:{port}/model.zip"
        message = expect_rpc_error(
            lambda: add_model(control.stub, url=url),  # noqa: B023
            grpc.StatusCode.UNAVAILABLE,
            "UnavailableError",
        )
        messages[kind] = message.replace(str(port), "PORT")
    assert set(messages.values()) == {
        "could not fetch http://127.0.0.1:PORT/model.zip: no answer from 127.0.0.1 "
        "(gave up after 2 attempts)"
    }


def test_an_unresolvable_name_reads_like_an_unreachable_host(
    start_server: ServerFactory, fake_dns: dict[str, list[str]]
) -> None:
    control = start_server(download_retries=0)
    url = "http://no-such-host.invalid/model.zip"
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
    )
    assert message == (
        f"could not fetch {url}: no answer from no-such-host.invalid (gave up after 1 attempts)"
    )


# -- bioimage.io ids and remote descriptions --------------------------------------------------------


def test_a_bioimageio_base_url_on_loopback_is_refused_unless_allowed(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    for file in NUCLEI.iterdir():
        name = "rdf.yaml" if file.name == "bioimageio.yaml" else file.name
        web.serve_file(f"/artifacts/nice-nuclei/files/{name}", file)
    refused = start_server(bioimageio_base_url=web.url("/artifacts"))
    url = web.url("/artifacts/nice-nuclei/files/rdf.yaml")
    message = expect_rpc_error(
        lambda: add_model(refused.stub, bioimageio_id="nice-nuclei"),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    assert message == _not_allowed(url, "127.0.0.1")
    assert web.requests == []
    allowed = start_server(
        refused.cache_dir.parent / "cache2", bioimageio_base_url=web.url("/artifacts"), **LOOPBACK
    )
    assert add_model(allowed.stub, bioimageio_id="nice-nuclei")[0].created


def test_the_files_of_a_remote_yaml_are_fetched_under_the_same_policy(
    start_server: ServerFactory, web: FakeWeb, fake_dns: dict[str, list[str]]
) -> None:
    """The yaml's host is allowed, and its files come from the same folder, checked again."""
    fake_dns["zoo.example"] = ["127.0.0.1"]
    port = web.server.server_address[1]
    control = start_server(fetch_allowed_networks=["127.0.0.1/32"])
    web.serve_folder("/zoo/nuclei", NUCLEI)
    result, _ = add_model(control.stub, url=f"http://zoo.example:{port}/zoo/nuclei/bioimageio.yaml")
    assert result.created
    assert set(web.hosts) == {f"zoo.example:{port}"}


# -- validation with io checks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights_url",
    [
        "http://10.0.0.1/weights.onnx",
        "http://169.254.169.254/latest/meta-data/iam",
        "http://[::1]:8080/weights.onnx",
        "http://localhost:8080/weights.onnx",
    ],
)
def test_validation_with_io_checks_never_fetches_a_private_weights_url(
    control: Running, tmp_path: Path, connections: list[tuple[str, int]], weights_url: str
) -> None:
    package = copy_package(NUCLEI, tmp_path / "remote-weights")
    edit_yaml(package, "source: weights.onnx", f"source: {weights_url}")
    message = expect_rpc_error(
        lambda: _validate(control, io_checks=True, path=str(package)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
    )
    host = weights_url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    assert message == (
        f"validating bioimageio.yaml with io checks would fetch {weights_url}, which is not "
        f"allowed: {host} is not a public address, and the server fetches only from public "
        "addresses unless setting fetch_allowed_networks allows more"
    )
    assert connections == []
    # Without io checks nothing is fetched, and the report is data as before.
    report = _validate(control, path=str(package)).report
    assert report.status == "valid-format"


def test_validation_with_io_checks_refuses_a_citation_on_a_private_address(
    control: Running, tmp_path: Path, web: FakeWeb
) -> None:
    """bioimageio.spec sends a request to every URL of a description (citations too)."""
    package = copy_package(NUCLEI, tmp_path / "cite")
    url = web.url("/probe")
    edit_yaml(package, "url: https://example.com/", f"url: {url}")
    expect_rpc_error(
        lambda: _validate(control, io_checks=True, path=str(package)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
        f"would fetch {url}, which is not allowed: 127.0.0.1 is not a public address",
    )
    assert web.requests == []


# -- bioimageio.spec's own fetches (validation with io checks runs them in a worker) -------------


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process guarded like a description worker, undone afterwards."""
    monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", httpcore.SyncBackend.connect_tcp)
    monkeypatch.setattr(fetch_policy, "process_policy", fetch_policy.process_policy)
    yield


def test_a_guarded_process_refuses_loopback_for_any_httpx_call(guarded: None, web: FakeWeb) -> None:
    fetch_policy.guard_process(fetch_policy.FetchPolicy())
    web.serve("/secret", Reply(body=b"internal"))
    with pytest.raises(PermissionDeniedError, match=r"not allowed to connect to 127\.0\.0\.1"):
        httpx.get(web.url("/secret"))
    assert web.requests == []


def test_bioimageio_specs_own_download_cannot_follow_a_redirect_to_a_private_address(
    guarded: None, web: FakeWeb, tmp_path: Path
) -> None:
    """The pre-check sees an allowed URL; the redirect it answers is stopped at the connection."""
    from bioimageio.spec import load_description

    fetch_policy.guard_process(fetch_policy.FetchPolicy(["127.0.0.1/32"]))
    weights = f"/w-{tmp_path.name}.onnx"  # a fresh URL: bioimageio.spec caches downloads
    web.serve(weights, Reply(status=302, headers={"Location": "http://10.0.0.1/w.onnx"}))
    package = copy_package(NUCLEI, tmp_path / "redirected")
    edit_yaml(package, "source: weights.onnx", f"source: {web.url(weights)}")
    with pytest.raises(PermissionDeniedError) as info:
        load_description(package / "bioimageio.yaml", perform_io_checks=True)
    assert info.value.message == (
        "validation with io checks is not allowed to connect to 10.0.0.1: it is not a public "
        "address, and the server fetches only from public addresses unless setting "
        "fetch_allowed_networks allows more"
    )
    assert web.requests == [weights]


def test_the_guard_is_only_installed_in_worker_processes(
    guarded: None, connections: list[tuple[str, int]], web: FakeWeb
) -> None:
    """The control service's own downloads have their transport (and allowed networks)."""
    fetch_policy.guard_worker_process()  # the test process is no multiprocessing child
    web.serve("/ok", Reply(body=b"ok"))
    assert httpx.get(web.url("/ok")).content == b"ok"


def test_validation_in_the_worker_cannot_be_redirected_to_a_private_address(
    start_server: ServerFactory, web: FakeWeb, tmp_path: Path
) -> None:
    """End to end: the pre-check passes (loopback allowed), the weights URL redirects to
    10.0.0.1, and the description worker's guard stops bioimageio.spec's own download."""
    control = start_server(**LOOPBACK)
    weights = f"/w-{tmp_path.name}.onnx"
    web.serve(weights, Reply(status=302, headers={"Location": "http://10.0.0.1/w.onnx"}))
    package = copy_package(NUCLEI, tmp_path / "redirected")
    edit_yaml(package, "source: weights.onnx", f"source: {web.url(weights)}")
    message = expect_rpc_error(
        lambda: _validate(control, io_checks=True, path=str(package)),
        grpc.StatusCode.PERMISSION_DENIED,
        "PermissionDeniedError",
        "validation with io checks is not allowed to connect to ",
        "it is not a public address",
    )
    assert "connect to 10.0.0.1" in message  # loopback, allowed, was fetched


def test_validation_in_the_worker_fetches_from_an_allowed_network(
    start_server: ServerFactory, web: FakeWeb, tmp_path: Path
) -> None:
    """The description worker follows the server's fetch_allowed_networks, not a stricter
    policy of its own: weights on an allowed (here loopback) host are downloaded and checked."""
    control = start_server(**LOOPBACK)
    weights = f"/w-{tmp_path.name}.onnx"
    web.serve(weights, Reply(body=(NUCLEI / "weights.onnx").read_bytes()))
    package = copy_package(NUCLEI, tmp_path / "allowed")
    edit_yaml(package, "source: weights.onnx", f"source: {web.url(weights)}")
    (package / "weights.onnx").unlink()
    report = _validate(control, io_checks=True, path=str(package)).report
    assert report.status in ("passed", "valid-format"), report.markdown
