"""The control service of modelrunner (gRPC): model registry and cache, metadata, validation,
test orchestration and routing to runtimes.

Modules, one responsibility each::

    server            start_control_server(settings) -> ControlServer (health, reflection)
    servicer          the thin gRPC ControlService: proto <-> control_plane
    open_inference    the Open Inference Protocol (KServe V2) servicer: proto <-> inference_plane
    open_inference_tensors  V2 tensors, datatypes and parameters <-> numpy and a PredictRequest
    inference_plane   InferencePlane: V2 readiness, models, limits; requests to the routed runtime
    server_reflection gRPC server reflection, v1 and v1alpha
    error_interceptor ModelRunnerError -> gRPC status + ErrorDetail trailer
    control_plane     ControlPlane: the transport-free logic layer (registry + runtimes)
    registry          ModelRegistry: add, list, describe, validate, remove, package folders
    sources           ModelSourceSpec -> staged package folder (path, URL, bioimage.io id, upload)
    package_staging   copying, unpacking and finding the description, with package limits
    downloads         streaming HTTP downloads with limits, timeouts and retries
    safe_zip          unpacking untrusted zips
    uploads           UploadPackage storage with size/sha256 checks and expiry
    cache             content-addressed models/<id> folders, LRU budget, pins, corruption checks
    cache_index       the sqlite index of the cache
    content_hash      package ids and manifests (sha256 of the file tree)
    descriptions      reading descriptions with bioimageio.spec (imported lazily)
    metadata          bioimageio ModelDescr -> types.ModelInfo
    validation        ValidateModel: description -> ValidationReport
    description_workers  worker processes that read untrusted descriptions, bounded in memory/time
    description_jobs  what those workers run (validate, read a model to add), plain data in and out
    yaml_limits       the cheap pre-check of description size and alias expansion (YAML bombs)
    call_limits       concurrency limits of uploads/validations/adds, per-client keys, idle streams
    limits            ResourceExhaustedError naming the setting (modelrunner.limits, shared)
    runtimes          RuntimeDirectory: registered runtimes, heartbeats, route choice
    runtime_actions   model tests and removals on a runtime, by the runtime client
    package_zips      zipped packages for FetchModelPackage
    server_info       versions, platform, cache and runtimes for GetServerInfo
"""

from modelrunner.entry_server.control_plane import ControlPlane, Route
from modelrunner.entry_server.inference_plane import InferencePlane
from modelrunner.entry_server.registry import ModelPackage, ModelRegistry
from modelrunner.entry_server.runtimes import Registration, RuntimeDirectory
from modelrunner.entry_server.server import ControlServer, start_control_server

__all__ = [
    "ControlPlane",
    "ControlServer",
    "InferencePlane",
    "ModelPackage",
    "ModelRegistry",
    "Registration",
    "Route",
    "RuntimeDirectory",
    "start_control_server",
]
