"""The control service of modelrunner (gRPC): model registry and cache, metadata, validation,
test orchestration and routing to runtimes.

In parts, one responsibility per module. The planes and what they own, here::

    server            start_control_server(settings) -> ControlServer: builds the parts below
    control_plane     ControlPlane: the transport-free logic layer (registry + runtimes)
    inference_plane   InferencePlane: V2 readiness, models, limits; requests to the routed runtime
    registry          ModelRegistry: add, list, describe, validate, remove, package folders
    model_access      which workspaces hold and see which model
    authentication    tokens and roles: the Authenticator, and the roles each method needs
    token_store       the token file
    call_limits       how many long calls of each kind run at once; cancellation of their work
    limits            ResourceExhaustedError naming the setting (modelrunner.limits, shared)
    progress          progress events of long work
    safe_zip          unpacking untrusted zips
    state_metrics     the registry's and runtimes' gauges
    server_info       versions, platform, cache and runtimes for GetServerInfo

``packages/``: getting and storing model packages::

    sources           ModelSourceSpec -> staged package folder (path, URL, bioimage.io id, upload)
    staging           copying, unpacking and finding the description, with package limits
    downloads         streaming HTTP downloads with limits, timeouts and retries
    fetch_policy      which addresses a download may reach (SSRF)
    uploads           UploadPackage storage with size/sha256 checks and expiry
    cache             content-addressed models/<id> folders, LRU budget, pins, corruption checks
    cache_index       the sqlite index of the cache
    content_hash      package ids and manifests (sha256 of the file tree)
    zips              zipped packages for FetchModelPackage
    descriptions      reading descriptions with bioimageio.spec (imported lazily)
    metadata          bioimageio ModelDescr -> types.ModelInfo
    validation        ValidateModel: description -> ValidationReport
    description_workers  worker processes that read untrusted descriptions, bounded in memory/time
    description_jobs  what those workers run (validate, read a model to add), plain data in and out
    yaml_limits       the cheap pre-check of description size and alias expansion (YAML bombs)

``runtimes/``: the runtimes the control service knows::

    directory         RuntimeDirectory: registered runtimes, heartbeats, route choice
    placement         the order of candidates for a model (warm first, then least busy)
    readiness         the health statuses: SERVING once a runtime can predict
    actions           model tests and removals on a runtime, by the runtime client

``edge/``: the gRPC edge, proto in and out, each servicer holding only its plane::

    control_servicer  the thin gRPC ControlService: proto <-> control_plane
    open_inference    the Open Inference Protocol (KServe V2) servicer: proto <-> inference_plane
    open_inference_tensors  V2 tensors, datatypes and parameters <-> numpy and a PredictRequest
    auth_interceptor  identifies each call's caller (asking the Authenticator), current_identity()
    call_context      who a call comes from, whether it is gone, idle client streams
    error_interceptor ModelRunnerError -> gRPC status + ErrorDetail trailer
    call_metrics      the interceptor that counts and times calls
    handler_wrapping  wrapping a gRPC method handler's behaviour (for the interceptors)
    server_reflection gRPC server reflection, v1 and v1alpha
"""

from modelrunner.entry_server.control_plane import ControlPlane, Route
from modelrunner.entry_server.inference_plane import InferencePlane
from modelrunner.entry_server.registry import ModelPackage, ModelRegistry
from modelrunner.entry_server.runtimes.directory import RegistrationReply, RuntimeDirectory
from modelrunner.entry_server.server import ControlServer, start_control_server

__all__ = [
    "ControlPlane",
    "ControlServer",
    "InferencePlane",
    "ModelPackage",
    "ModelRegistry",
    "RegistrationReply",
    "Route",
    "RuntimeDirectory",
    "start_control_server",
]
