"""Where the client turns transport exceptions into modelrunner's typed errors: the one place."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pyarrow as pa
import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.transport_errors import from_flight_error, from_rpc_error


@contextmanager
def translated_errors() -> Iterator[None]:
    """Re-raise ``grpc.RpcError`` and Flight/Arrow errors as :class:`ModelRunnerError`."""
    try:
        yield
    except errors.ModelRunnerError:
        raise
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None
    except (flight.FlightError, pa.ArrowInvalid, pa.ArrowKeyError) as e:
        # a runtime's INVALID_ARGUMENT and NOT_FOUND arrive as ArrowInvalid and ArrowKeyError
        raise from_flight_error(e) from None
    except pa.ArrowException as e:
        raise errors.ModelRunnerError(str(e)) from None


def typed_error(error: BaseException) -> BaseException:
    """``error`` as :func:`translated_errors` would raise it (other exceptions as they are), for
    a thread that hands an error to another: translate it in the thread that caught it, where
    the call's error trailer is kept."""
    try:
        with translated_errors():
            raise error
    except errors.ModelRunnerError as typed:
        return typed
    except BaseException:  # noqa: BLE001 - not a transport error: handed on as it is
        return error
