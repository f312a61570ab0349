"""HTTP(S) downloads to disk with size limits, timeouts and retries.

Bodies are streamed to the destination file chunk by chunk, never held in memory. httpx
exceptions are translated here, and only here, into modelrunner errors:

* HTTP 404 / 410                        -> SourceNotFoundError
* other 4xx answers                     -> InvalidSourceError
* unreachable host, 5xx, 408, 429       -> retried with backoff, then UnavailableError
* a read that times out                 -> DeadlineExceededError
* a body larger than the limit          -> ResourceExhaustedError
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import httpx

from modelrunner import errors
from modelrunner.entry_server.progress import ProgressCallback, StageProgress, no_progress
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024**2
_RETRY_STATUS = frozenset({408, 429})


class _RetryableFailure(Exception):
    """A failure that another attempt may not have (connection trouble, server errors)."""


class Downloader:
    """Downloads files with the limits of ``settings``; one connection pool, safe across threads."""

    def __init__(self, settings: Settings, *, transport: httpx.BaseTransport | None = None) -> None:
        self._max_bytes = settings.max_download_bytes
        self._timeout_s = settings.download_timeout_s
        self._retries = settings.download_retries
        self._backoff_s = settings.download_backoff_s
        self._client = httpx.Client(
            timeout=httpx.Timeout(settings.download_timeout_s),
            follow_redirects=True,
            transport=transport,
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
            f"cannot download {url}: {failure} (gave up after {attempts} attempts)",
            details={"url": url},
        )

    def _download_once(self, url: str, dest: Path, progress: ProgressCallback, limit: int) -> int:
        try:
            with self._client.stream("GET", url) as response:
                _check_status(url, response)
                declared = int(response.headers.get("content-length") or 0)
                if declared > limit:
                    raise _too_large(url, limit, f"it is {declared} bytes")
                stage = StageProgress(progress, "download", total=declared)
                stage.start()
                with dest.open("wb") as out:
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        if stage.done + len(chunk) > limit:
                            raise _too_large(url, limit, "the body exceeds it")
                        out.write(chunk)
                        stage.advance(len(chunk))
                stage.finish()
                return stage.done
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ConnectTimeout):
                raise _RetryableFailure(f"connection timed out: {exc}") from exc
            raise errors.DeadlineExceededError(
                f"download of {url} timed out (no data for {self._timeout_s:g} s)",
                details={"url": url},
            ) from exc
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise _RetryableFailure(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise errors.InvalidSourceError(
                f"cannot download {url}: {exc}", details={"url": url}
            ) from exc
        except httpx.HTTPError as exc:
            raise errors.UnavailableError(
                f"cannot download {url}: {type(exc).__name__}: {exc}", details={"url": url}
            ) from exc


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
    return errors.ResourceExhaustedError(
        f"download of {url} refused: {why}, over the limit of {limit} bytes "
        "(setting max_download_bytes)",
        details={"url": url, "limit": limit},
    )
