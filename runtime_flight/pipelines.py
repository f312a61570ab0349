"""A pool of warm bioimageio.core prediction pipelines, one per (model id, weight format, device).

* A pipeline is created with ``create_prediction_pipeline(descr, devices=..., weights_format=...)``,
  whose model adapter loads the weights in its constructor; it stays loaded until it is evicted
  or unloaded. (Calling ``.load()`` again would load the weights a second time, and
  ``bioimageio.core.predict(model=pipeline)`` unloads the pipeline when it returns: neither is
  used here.)
* Two requests for the same key load it once: the first loads, the others wait for it
  (single flight). Loads on one device run one at a time, so the CUDA memory a load takes can be
  measured, and two large models do not race for the same memory.
* Memory budget: a pipeline's footprint is the size of its weight files, or on a GPU the larger
  of that and the drop in free device memory while it loaded. Before a load, least recently used
  pipelines that are not in use are unloaded until the new one fits.
* ``use()`` lends a pipeline: it is not evicted while lent, and a :class:`WarmPipeline` runs one
  prediction at a time (its lock).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelrunner.errors import (
    ModelInUseError,
    ModelNotFoundError,
    ModelRunnerError,
    ResourceExhaustedError,
)
from modelrunner.types import LoadedModel, LoadInfo

from . import devices, weight_formats
from .descriptions import load_description, weights_bytes
from .limits import RuntimeLimits
from .load_errors import load_error, load_error_again, mib
from .warm_pipeline import Key, WarmPipeline, now

if TYPE_CHECKING:
    from bioimageio.core import PredictionPipeline
    from bioimageio.spec.model import v0_5

    from modelrunner.settings import Settings


logger = logging.getLogger(__name__)

PackageDir = Callable[[str], Path]
"""Model id -> the directory of its unpacked package (supplied by the Flight server)."""
PipelineFactory = Callable[["v0_5.ModelDescr", str, str], "PredictionPipeline"]
"""(description, weight format, device) -> a loaded pipeline."""


_DESCRIPTION_CACHE = 256


def create_pipeline(descr: v0_5.ModelDescr, weight_format: str, device: str) -> PredictionPipeline:
    """A pipeline with loaded weights (bioimageio.core's adapters load in their constructor)."""
    from bioimageio.core import create_prediction_pipeline

    return create_prediction_pipeline(
        descr,
        devices=weight_formats.core_devices(weight_format, device),
        weights_format=weight_format,  # type: ignore[arg-type]
    )


@dataclass(eq=False)
class _Loading:
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    reserved_bytes: int = 0


class PipelinePool:
    """Warm pipelines within a memory budget. Thread-safe."""

    def __init__(
        self,
        package_dir: PackageDir,
        *,
        memory_budget_bytes: int = 16 * 1024**3,
        default_device: str | None = None,
        factory: PipelineFactory = create_pipeline,
        fast_path: bool = True,
        limits: RuntimeLimits | None = None,
    ) -> None:
        self._package_dir = package_dir
        self.memory_budget_bytes = memory_budget_bytes
        self._default_device_setting = default_device
        self._factory = factory
        self.fast_path = fast_path
        """Check and use each pipeline's fast path (:mod:`.fast_path`)."""
        self.limits = limits or RuntimeLimits()
        """What each prediction of a pipeline may spend."""
        self._cond = threading.Condition()
        self._warm: OrderedDict[Key, WarmPipeline] = OrderedDict()
        """Least recently used first."""
        self._loading: dict[Key, _Loading] = {}
        self._descriptions: OrderedDict[str, v0_5.ModelDescr] = OrderedDict()
        self._keys: OrderedDict[tuple[str, str, str], Key] = OrderedDict()
        """What :meth:`resolve` chose for (model id, weight format, device) as asked."""
        self._device_locks: dict[str, threading.Lock] = {}
        self.loads = 0
        """Pipelines created so far (for tests and stats)."""

    @classmethod
    def from_settings(cls, settings: Settings, package_dir: PackageDir) -> PipelinePool:
        return cls(
            package_dir,
            memory_budget_bytes=settings.runtime_memory_budget_bytes,
            default_device=settings.device,
            fast_path=settings.fast_path,
            limits=RuntimeLimits.from_settings(settings),
        )

    @property
    def default_device(self) -> str:
        return devices.default_device(self._default_device_setting)

    def description(self, model_id: str) -> v0_5.ModelDescr:
        """The model's description (cached; packages are content-addressed, so immutable)."""
        with self._cond:
            cached = self._descriptions.get(model_id)
            if cached is not None:
                self._descriptions.move_to_end(model_id)
                return cached
        try:
            package = self._package_dir(model_id)
        except ModelRunnerError:
            raise
        except (KeyError, FileNotFoundError, LookupError) as e:
            raise ModelNotFoundError(
                f"model {model_id} not found: {e}", details={"model_id": model_id}
            ) from e
        descr = load_description(Path(package), model_id)
        with self._cond:
            self._descriptions[model_id] = descr
            while len(self._descriptions) > _DESCRIPTION_CACHE:
                self._descriptions.popitem(last=False)
        return descr

    def resolve(
        self, model_id: str, weight_format: str | None = None, device: str | None = None
    ) -> Key:
        """The pool key a request maps to (chooses the weight format and device). A model's
        description, the frameworks and the devices here do not change: the choice is kept."""
        asked = (model_id, weight_format or "", device or "")
        key = self._keys.get(asked)
        if key is not None:
            return key
        requested = devices.resolve_device(device) if device else None
        descr = self.description(model_id)
        fmt, dev = weight_formats.choose(descr, weight_format, requested, self.default_device)
        key = (model_id, fmt, dev)
        with self._cond:
            self._keys[asked] = key
            while len(self._keys) > _DESCRIPTION_CACHE:
                self._keys.popitem(last=False)
        return key

    def load(
        self, model_id: str, weight_format: str | None = None, device: str | None = None
    ) -> LoadInfo:
        """Make a pipeline warm. ``load_seconds`` is how long this call took (about 0 when the
        pipeline was already warm)."""
        start = time.perf_counter()
        with self.use(model_id, weight_format, device) as warm:
            return LoadInfo(model=warm.info(), load_seconds=time.perf_counter() - start)

    @contextmanager
    def use(
        self, model_id: str, weight_format: str | None = None, device: str | None = None
    ) -> Iterator[WarmPipeline]:
        """Lend the warm pipeline for a request, loading it first when needed."""
        warm = self.lend(model_id, weight_format, device)
        try:
            yield warm
        finally:
            self.give_back(warm)

    def lend(
        self, model_id: str, weight_format: str | None = None, device: str | None = None
    ) -> WarmPipeline:
        """:meth:`use` for a caller that gives the pipeline back itself (:meth:`give_back`)."""
        return self._acquire(self.resolve(model_id, weight_format, device))

    def give_back(self, warm: WarmPipeline) -> None:
        self._release(warm)

    def unload(
        self,
        model_id: str,
        weight_format: str | None = None,
        device: str | None = None,
        *,
        force: bool = False,
    ) -> int:
        """Unload the model's pipelines (all formats/devices unless given); returns how many.

        Raises:
            ModelInUseError: one of them is serving a request (unless ``force``: then it is
                unloaded as soon as the request ends).
        """
        wanted_device = devices.resolve_device(device) if device else None
        with self._cond:
            matching = [
                w
                for k, w in self._warm.items()
                if k[0] == model_id
                and (not weight_format or k[1] == weight_format)
                and (wanted_device is None or k[2] == wanted_device)
            ]
            busy = [w for w in matching if w.users]
            if busy and not force:
                raise ModelInUseError(
                    f"model {model_id} is in use on {', '.join(w.device for w in busy)}",
                    details={"model_id": model_id},
                )
            idle = []
            for w in matching:
                del self._warm[w.key]
                w.retired = True
                if not w.users:
                    idle.append(w)
        for w in idle:
            self._close(w)
        return len(matching)

    def retire(self, model_id: str) -> list[WarmPipeline]:
        """Take every pipeline of ``model_id`` out of the pool at once (a removed model): idle
        ones are closed now, those in use when their last request ends. Returns them, so the
        caller can wait for those requests (``WarmPipeline.users``)."""
        with self._cond:
            retired = [w for k, w in self._warm.items() if k[0] == model_id]
            for w in retired:
                del self._warm[w.key]
                w.retired = True
            idle = [w for w in retired if not w.users]
        for w in idle:
            self._close(w)
        return retired

    def unload_idle(self, idle_s: float) -> int:
        """Unload the pipelines nobody holds and nobody used for ``idle_s`` seconds (a copy
        loaded to spread traffic that is no longer needed); returns how many."""
        cutoff = now().timestamp() - idle_s
        with self._cond:
            idle = [
                w
                for w in self._warm.values()
                if not w.users and w.last_used_at.timestamp() < cutoff
            ]
            for w in idle:
                del self._warm[w.key]
                w.retired = True
        for w in idle:
            logger.info("unloading %s (%s, %s): idle for %.0f s", *w.key, idle_s)
            self._close(w)
        return len(idle)

    def loading(self, model_id: str) -> bool:
        """Whether a pipeline of ``model_id`` (a full id) is being loaded now."""
        with self._cond:
            return any(k[0] == model_id for k in self._loading)

    def has_warm(self, model_id: str) -> bool:
        """Whether a pipeline of ``model_id`` (a full id) is loaded."""
        with self._cond:
            return any(k[0] == model_id for k in self._warm)

    def loaded(self) -> tuple[LoadedModel, ...]:
        with self._cond:
            return tuple(w.info() for w in self._warm.values())

    @property
    def memory_used_bytes(self) -> int:
        with self._cond:
            return self._used()

    def close(self) -> None:
        """Unload every pipeline (also those in use: call at shutdown)."""
        with self._cond:
            pipelines = list(self._warm.values())
            self._warm.clear()
        for w in pipelines:
            w.retired = True
            self._close(w)

    # -- internals ---------------------------------------------------------------------------

    def _used(self) -> int:
        return sum(w.memory_bytes for w in self._warm.values()) + sum(
            x.reserved_bytes for x in self._loading.values()
        )

    def _acquire(self, key: Key) -> WarmPipeline:
        estimate: int | None = None  # worked out (it looks at the weight files) only to load
        while True:
            with self._cond:
                warm = self._warm.get(key)
                if warm is not None:
                    warm.users += 1
                    self._warm.move_to_end(key)
                    return warm
                loading = self._loading.get(key)
                if loading is None and estimate is not None:
                    victims = self._make_room(key, estimate)
                    loading = self._loading[key] = _Loading(reserved_bytes=estimate)
                    break
            if loading is None:
                estimate = weights_bytes(self.description(key[0]), key[1])
                continue  # look again: another request may have started the load meanwhile
            loading.done.wait()
            if loading.error is not None:
                raise load_error_again(loading.error)
        for victim in victims:
            self._close(victim)
        try:
            warm = self._load(key, loading.reserved_bytes)
        except BaseException as e:
            with self._cond:
                loading.error = e
                del self._loading[key]
                loading.done.set()
            raise
        with self._cond:
            del self._loading[key]
            self._warm[key] = warm
            warm.users += 1
            victims = self._make_room(key, 0, raise_when_full=False)
            loading.done.set()
        for victim in victims:
            self._close(victim)
        return warm

    def _release(self, warm: WarmPipeline) -> None:
        with self._cond:
            warm.users -= 1
            warm.last_used_at = now()
            close_now = warm.retired and not warm.users
        if close_now:
            self._close(warm)

    def _make_room(
        self, key: Key, needed: int, *, raise_when_full: bool = True
    ) -> list[WarmPipeline]:
        """Take least recently used idle pipelines out of the pool until ``needed`` more bytes
        fit the budget; the caller closes them outside the lock. Call with the lock held.

        Raises (when ``raise_when_full``):
            ResourceExhaustedError: the model is larger than the budget, or the pipelines in use
                leave too little of it.
        """
        budget = self.memory_budget_bytes
        if raise_when_full and needed > budget:
            raise ResourceExhaustedError(
                f"model {key[0]} ({key[1]}) needs about {mib(needed)}, more than the runtime's "
                + f"memory budget of {mib(budget)}",
                details={"model_id": key[0], "needed_bytes": needed},
            )
        used = self._used()
        victims: list[WarmPipeline] = []
        for k, w in self._warm.items():
            if used + needed <= budget:
                break
            if k != key and not w.users:
                victims.append(w)
                used -= w.memory_bytes
        if raise_when_full and used + needed > budget:
            busy = [k for k, w in self._warm.items() if w.users]
            raise ResourceExhaustedError(
                f"model {key[0]} ({key[1]}) needs about {mib(needed)}; the memory budget of "
                + f"{mib(budget)} is taken by pipelines in use: "
                + ", ".join(f"{m} ({f}, {d})" for m, f, d in busy),
                details={"model_id": key[0], "needed_bytes": needed},
            )
        for w in victims:
            logger.info("unloading %s (%s, %s) to stay within the memory budget", *w.key)
            del self._warm[w.key]
            w.retired = True
        return victims

    def _device_lock(self, device: str) -> threading.Lock:
        with self._cond:
            return self._device_locks.setdefault(device, threading.Lock())

    def _load(self, key: Key, estimate: int) -> WarmPipeline:
        model_id, fmt, device = key
        descr = self.description(model_id)
        with self._device_lock(device):
            free_before = devices.cuda_free_bytes(device) if devices.is_cuda(device) else 0
            start = time.perf_counter()
            logger.info("loading %s (%s) on %s", model_id, fmt, device)
            try:
                pipeline = self._factory(descr, fmt, device)
            except ModelRunnerError:
                raise
            except Exception as e:
                raise load_error(e, key) from e
            try:
                warm = WarmPipeline(model_id, fmt, device, pipeline, limits=self.limits)
                serving = warm.check_serving_path(enabled=self.fast_path)
            except BaseException:
                pipeline.unload()
                raise
            warm.load_seconds = seconds = time.perf_counter() - start
            memory = estimate
            if devices.is_cuda(device):
                memory = max(memory, free_before - devices.cuda_free_bytes(device))
            warm.memory_bytes = memory
        self.loads += 1
        logger.info(
            "loaded %s (%s) on %s in %.2f s, about %s, %s path",
            model_id,
            fmt,
            device,
            seconds,
            mib(memory),
            serving.name,
        )
        return warm

    def _close(self, warm: WarmPipeline) -> None:
        try:
            warm.close()
        except Exception:  # unloading is best effort; the references go anyway
            logger.exception("unloading %s failed", warm.key)
