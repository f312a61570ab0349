"""Adding from URLs and bioimage.io ids, against a local web server."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.v1 import control_pb2
from tests.entry_server.conftest import FakeWeb, Reply, ServerFactory, wait_for
from tests.entry_server.helpers import CAREAMICS_ZIP, NUCLEI, add_model, expect_rpc_error, source

NUCLEI_ID = hash_package(NUCLEI)[0] if NUCLEI.is_dir() else ""  # tests.zoo skips its users
LOOPBACK: dict[str, Any] = {"fetch_allowed_networks": ["127.0.0.0/8"]}
"""The local web server is on loopback, which the server fetches from only when allowed."""


def test_add_a_zip_from_a_url(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK)
    web.serve_file("/models/n2v.zip", CAREAMICS_ZIP)
    result, progress = add_model(control.stub, url=web.url("/models/n2v.zip"))
    assert result.created
    assert result.model.name == "tiny n2v"
    assert result.model.source == web.url("/models/n2v.zip")
    downloads = [p for p in progress if p.stage == "download"]
    assert downloads[-1].done == downloads[-1].total == CAREAMICS_ZIP.stat().st_size


def test_add_a_yaml_from_a_url_downloads_the_files_it_names(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    control = start_server(**LOOPBACK)
    web.serve_folder("/zoo/nuclei", NUCLEI)
    result, _ = add_model(control.stub, url=web.url("/zoo/nuclei/bioimageio.yaml"))
    assert result.model.id == NUCLEI_ID  # same content as the local folder: same id
    assert sorted(web.requests) == sorted(f"/zoo/nuclei/{p.name}" for p in NUCLEI.iterdir())


def test_a_bioimageio_id_resolves_through_the_base_url(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    control = start_server(**LOOPBACK, bioimageio_base_url=web.url("/artifacts/"))
    for file in NUCLEI.iterdir():
        name = "rdf.yaml" if file.name == "bioimageio.yaml" else file.name
        web.serve_file(f"/artifacts/nice-nuclei/files/{name}", file)
    result, _ = add_model(control.stub, bioimageio_id="nice-nuclei")
    assert result.created
    assert result.model.source == "nice-nuclei"
    assert web.requests[0] == "/artifacts/nice-nuclei/files/rdf.yaml"
    described = control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id="nice-nuclei"))
    assert described.model.id == result.model.id


def test_an_unknown_bioimageio_id_is_not_found(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK, bioimageio_base_url=web.base_url)
    url = web.url("/no-such-model/files/rdf.yaml")
    message = expect_rpc_error(
        lambda: add_model(control.stub, bioimageio_id="no-such-model"),
        grpc.StatusCode.NOT_FOUND,
        "SourceNotFoundError",
    )
    assert (
        message == f"bioimage.io id 'no-such-model' not found: {url} not found (HTTP 404 Not Found)"
    )


def test_a_url_answering_404_is_not_found(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK)
    url = web.url("/missing.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.NOT_FOUND,
        "SourceNotFoundError",
    )
    assert message == f"{url} not found (HTTP 404 Not Found)"
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_server_error_is_retried(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK, download_retries=2)
    web.serve(
        "/flaky.zip",
        Reply(status=500, body=b"oops"),
        Reply(status=503),
        Reply(body=CAREAMICS_ZIP.read_bytes()),
    )
    result, _ = add_model(control.stub, url=web.url("/flaky.zip"))
    assert result.model.name == "tiny n2v"
    assert web.requests == ["/flaky.zip"] * 3


def test_persistent_server_errors_are_unavailable(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    control = start_server(**LOOPBACK, download_retries=1)
    web.serve("/broken.zip", Reply(status=502))
    url = web.url("/broken.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
    )
    assert message == f"could not fetch {url}: HTTP 502 Bad Gateway (gave up after 2 attempts)"
    assert web.requests == ["/broken.zip"] * 2


def test_an_unreachable_host_is_unavailable(start_server: ServerFactory) -> None:
    control = start_server(**LOOPBACK, download_retries=1)
    url = "http://127.0.0.1:9/model.zip"  # the discard port: nothing listens
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
    )
    # The same text for a closed port as for a filtered one: no port-state oracle.
    assert message == f"could not fetch {url}: no answer from 127.0.0.1 (gave up after 2 attempts)"


def test_a_server_that_does_not_answer_in_time_is_unavailable(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    """No answer within the timeout reads like no connection at all (and is retried): a
    silent open port and a closed one are not told apart."""
    control = start_server(**LOOPBACK, download_timeout_s=0.2, download_retries=1)
    web.serve("/slow.zip", Reply(body=b"late", delay_s=1.0))
    url = web.url("/slow.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.UNAVAILABLE,
        "UnavailableError",
    )
    assert message == f"could not fetch {url}: no answer from 127.0.0.1 (gave up after 2 attempts)"


def test_other_client_errors_are_invalid(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK)
    web.serve("/private.zip", Reply(status=403))
    url = web.url("/private.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.INVALID_ARGUMENT,
        "InvalidSourceError",
    )
    assert message == f"{url} refused the download (HTTP 403 Forbidden)"


def test_a_download_over_the_limit_is_refused(start_server: ServerFactory, web: FakeWeb) -> None:
    control = start_server(**LOOPBACK, max_download_bytes=100_000)
    web.serve_file("/big.zip", CAREAMICS_ZIP)
    url = web.url("/big.zip")
    message = expect_rpc_error(
        lambda: add_model(control.stub, url=url),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message == (
        f"download of {url} refused: it is {CAREAMICS_ZIP.stat().st_size} bytes, over the limit "
        "of 100000 bytes (setting max_download_bytes)"
    )


def test_files_named_by_a_remote_yaml_count_against_the_package_limit(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    control = start_server(**LOOPBACK, max_unpacked_bytes=3 * 1024**2)
    web.serve_folder("/zoo/nuclei", NUCLEI)
    expect_rpc_error(
        lambda: add_model(control.stub, url=web.url("/zoo/nuclei/bioimageio.yaml")),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
        "package exceeds the limit of 3145728 bytes (setting max_unpacked_bytes) at ",
    )


def test_cancelling_an_add_stops_it_and_cleans_up(
    start_server: ServerFactory, web: FakeWeb
) -> None:
    control = start_server(**LOOPBACK)
    web.serve("/slow.zip", Reply(body=CAREAMICS_ZIP.read_bytes(), delay_s=0.5))
    call = control.stub.AddModel(
        control_pb2.AddModelRequest(source=source(url=web.url("/slow.zip")))
    )
    wait_for(lambda: web.requests == ["/slow.zip"])
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    # The add notices at its next progress event, then removes what it staged.
    wait_for(lambda: not any((control.cache_dir / "tmp").iterdir()), timeout=10)
    time.sleep(0.2)
    assert list((control.cache_dir / "models").iterdir()) == []
