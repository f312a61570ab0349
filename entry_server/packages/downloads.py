"""HTTP(S) downloads to disk with size limits, timeouts, retries and the fetch policy.

Bodies are streamed to the destination file chunk by chunk, never held in memory. Redirects are
followed here, hop by hop (at most ``fetch_max_redirects``), and every URL, the first and each
redirect target, goes through :mod:`modelrunner.entry_server.packages.fetch_policy`: only http(s), and
only to allowed addresses. httpx exceptions are translated here, and only here, into modelrunner
errors:

* a host that is (or resolves to) a refused address -> PermissionDeniedError ("not allowed"),
  before any connection to it
* HTTP 404 / 410                        -> SourceNotFoundError
* other 4xx answers, too many redirects -> InvalidSourceError
* no answer (refused connection, timeout, reset, unresolvable name), 5xx, 408, 429
                                        -> retried with backoff, then UnavailableError
                                           ("could not fetch")
* a body read that times out            -> DeadlineExceededError
* a body larger than the limit          -> ResourceExhaustedError

A closed port, a filtered one, a refused connection and a port that answers something other than
HTTP all give the same message: errors do not tell port states apart.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from modelrunner import errors
from modelrunner.entry_server.limits import over_limit
from modelrunner.entry_server.packages.fetch_policy import (
    AddressNotAllowed,
    CheckedTransport,
    FetchPolicy,
)
from modelrunner.progress import ProgressCallback, StageProgress, no_progress
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1024**2
_RETRY_STATUS = frozenset({408, 429})


class _RetryableFailure(Exception):
    """A failure that another attempt may not have (connection trouble, server errors)."""


class Downloader:
    """Downloads files with the limits of ``settings``; one connection pool, safe across threads."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        """``transport`` replaces the checking transport (tests); IP-literal hosts are still
        checked against the policy before each request."""
        self._max_bytes = settings.max_download_bytes
        self._timeout_s = settings.download_timeout_s
        self._retries = settings.download_retries
        self._backoff_s = settings.download_backoff_s
        self._max_redirects = settings.fetch_max_redirects
        self.policy = FetchPolicy(settings.fetch_allowed_networks)
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.download_timeout_s),
            follow_redirects=False,
            transport=transport or CheckedTransport(self.policy),
            trust_env=False,
            headers={"User-Agent": "modelrunner"},
        )

    def close(self) -> None:
        self._client.close()

    def download(
        self,
        url: str,
        dest: Path,
        *,
        progress: ProgressCallback = no_progress,
        max_bytes: int | None = None,
    ) -> int:
        """Download ``url`` to ``dest``; returns the number of bytes written.

        ``dest`` is removed when the download fails, so a failure never leaves a partial file.
        """
        limit = self._max_bytes if max_bytes is None else min(max_bytes, self._max_bytes)
        attempts = self._retries + 1
        failure: _RetryableFailure | None = None
        for attempt in range(attempts):
            if attempt:
                delay = self._backoff_s * 2 ** (attempt - 1)
                logger.info(
                    "retrying download of %s in %.2f s (attempt %d of %d): %s",
                    url,
                    delay,
                    attempt + 1,
                    attempts,
                    failure,
                )
                time.sleep(delay)
            try:
                return self._download_once(url, dest, progress, limit)
            except _RetryableFailure as exc:
                failure = exc
            except BaseException:
                dest.unlink(missing_ok=True)
                raise
            dest.unlink(missing_ok=True)
        raise errors.UnavailableError(
            f"could not fetch {url}: {failure} (gave up after {attempts} attempts)",
            details={"url": url},
        )

    def _download_once(self, url: str, dest: Path, progress: ProgressCallback, limit: int) -> int:
        current = url
        for _ in range(self._max_redirects + 1):
            host = self._checked_host(url, current)
            answered = False
            try:
                with self._client.stream("GET", current) as response:
                    answered = True
                    if response.has_redirect_location:
                        current = str(response.url.join(response.headers["location"]))
                        continue
                    _check_status(url, response)
                    return self._save_body(url, response, dest, progress, limit)
            except AddressNotAllowed as exc:
                raise _not_allowed(url, current, exc.host) from exc
            except httpx.TimeoutException as exc:
                if not answered:
                    raise _no_answer(host, exc) from exc
                raise errors.DeadlineExceededError(
                    f"download of {url} timed out (no data for {self._timeout_s:g} s)",
                    details={"url": url},
                ) from exc
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                raise _no_answer(host, exc) from exc
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                raise errors.InvalidSourceError(
                    f"cannot download {url}: {exc}", details={"url": url}
                ) from exc
            except httpx.HTTPError as exc:
                raise errors.UnavailableError(
                    f"could not fetch {url}: {type(exc).__name__}", details={"url": url}
                ) from exc
        raise errors.InvalidSourceError(
            f"cannot download {url}: more than {self._max_redirects} redirects "
            "(setting fetch_max_redirects)",
            details={"url": url, "limit": self._max_redirects},
        )

    def _checked_host(self, url: str, current: str) -> str:
        """The host of ``current`` (``url`` or a redirect target), refused unless it is an
        http(s) URL whose host is not a refused IP address; names are checked on connecting."""
        parts = urlsplit(current)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            if current == url:
                raise errors.InvalidSourceError(
                    f"{url!r} is not an http(s) URL", details={"url": url}
                )
            raise errors.PermissionDeniedError(
                f"fetching {url} is not allowed: it redirects to a URL that is not http(s)",
                details={"url": url, "setting": "fetch_allowed_networks"},
            )
        try:
            self.policy.check_literal(parts.hostname)
        except AddressNotAllowed as exc:
            raise _not_allowed(url, current, exc.host) from exc
        return parts.hostname

    def _save_body(
        self, url: str, response: httpx.Response, dest: Path, progress: ProgressCallback, limit: int
    ) -> int:
        declared = int(response.headers.get("content-length") or 0)
        if declared > limit:
            raise _too_large(url, limit, f"it is {declared} bytes")
        stage = StageProgress(progress, "download", total=declared)
        stage.start()
        with dest.open("wb") as out:
            for chunk in response.iter_bytes(_CHUNK_BYTES):
                if stage.done + len(chunk) > limit:
                    raise _too_large(url, limit, "the body exceeds it")
                out.write(chunk)
                stage.advance(len(chunk))
        stage.finish()
        return stage.done


def _no_answer(host: str, exc: Exception) -> _RetryableFailure:
    # The cause goes to the log only: "connection refused" versus "timed out" would tell a
    # client which ports are open on hosts it cannot reach itself.
    logger.info("no answer from %s: %s: %s", host, type(exc).__name__, exc)
    return _RetryableFailure(f"no answer from {host}")


def _not_allowed(url: str, current: str, host: str) -> errors.PermissionDeniedError:
    via = "" if current == url else " (reached by a redirect)"
    return errors.PermissionDeniedError(
        f"fetching {url} is not allowed: {host}{via} is not a public address, and the server "
        "fetches only from public addresses unless setting fetch_allowed_networks allows more",
        details={"url": url, "setting": "fetch_allowed_networks"},
    )


def _check_status(url: str, response: httpx.Response) -> None:
    code = response.status_code
    if code < 400:
        return
    answer = f"HTTP {code} {response.reason_phrase}".strip()
    if code in (404, 410):
        raise errors.SourceNotFoundError(
            f"{url} not found ({answer})", details={"url": url, "http_status": code}
        )
    if code >= 500 or code in _RETRY_STATUS:
        raise _RetryableFailure(answer)
    raise errors.InvalidSourceError(
        f"{url} refused the download ({answer})", details={"url": url, "http_status": code}
    )


def _too_large(url: str, limit: int, why: str) -> errors.ResourceExhaustedError:
    return over_limit(
        "max_download_bytes",
        limit,
        f"download of {url} refused: {why}, over the limit of {limit} bytes",
        url=url,
    )
