"""The Ray Serve application: one FastAPI ingress deployment that holds a registered model.

Replicas are pinned to a resolved version: ``user_config={"version": v}`` at deploy,
and ``reconfigure`` loads it. When serving ``models:/NAME@ALIAS``, each replica runs a
small follower task that re-resolves the alias every ``poll_s`` seconds and, when it
moved, calls the same load path: the new version is loaded fully in a worker thread
and then one reference is swapped. A batch reads that reference once, so every request
is served wholly by one version, and every answer names it.

Why a follower inside each replica and not a driver redeploying with a new
``user_config``: from the Python API, ``serve.run`` gives every deploy a new code
version, so Serve replaces the replicas (a rolling restart) instead of reconfiguring
them in place; and a driver-side watcher would die with the ``setpipe serve`` process
while a cluster app lives on. A replica started later (autoscaling, a restart)
resolves the alias itself before it takes traffic, so it never starts on the old
version. With several replicas the move is not simultaneous: for up to ``poll_s``
some replicas answer with the old version and some with the new, each answer naming
its own.

Endpoints: ``POST /predict``, ``GET /health``, ``GET /ready`` (503 until a model is
loaded), ``GET /model``.

Slow clients: a request's body must arrive within ``limits.request_timeout_s`` (``setpipe
serve --request-timeout``, 30 s) of its handler starting, else 408; each replica has only
``max_ongoing_requests`` slots, and a client that stops sending must not hold one for
long. In front of the replicas, the local HAProxy (serve/ingress.py) holds a request
until its headers and first 16 KB of body are in, within the same time, so most stalled
clients never reach a replica at all, and answers ``GET /health`` itself from its checks
of the replicas, so the health check answers while every slot is busy.
"""

# No `from __future__ import annotations` here: FastAPI must see the real Request class on
# the ingress methods; as a string it was left unresolved under Serve (every POST answered
# 422 "query.request: Field required").
import asyncio
import logging
import os
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from setpipe.data.request import BadRequest, Limits
from setpipe.errors import ServeError
from setpipe.serve._batcher import ElementBatcher
from setpipe.serve.schema import ErrorResponse, ModelInfo, PredictResponse, parse_request
from setpipe.spec.models import DEFAULT_ELEMENT_BUDGET
from setpipe.tracking.pyfunc import NON_FINITE_HINT, non_finite_sets
from setpipe.tracking.store import not_a_registered_uri, parse_registry_uri, resolve

APP_NAME = "setpipe"
DEFAULT_HOST = "127.0.0.1"
"""Loopback only unless told otherwise: a model endpoint is not exposed by accident."""
DEFAULT_PORT = 8000
log = logging.getLogger(__name__)

# Bodies above this are decoded in a worker thread so /health stays answerable meanwhile.
_INLINE_PARSE_BYTES = 256 * 1024
# glibc's malloc in a replica's process, set when it starts. Left to itself, glibc raises
# its mmap threshold to the size of each big block freed (up to 32 MB), after which a
# request's multi-MB buffers come from heaps the threads keep: a 40 MB body grew the
# replica by 193 MB (bench/serve_load.py --quick). With the threshold fixed at 4 MiB, the
# body-sized buffers go back to the OS as they are freed: +103 MB. The heap is trimmed
# only past 32 MiB free, so ordinary requests reuse their buffers instead of faulting in
# fresh pages (a fixed 128 KiB threshold alone cost a 10k-element request ~40% more CPU).
_REPLICA_ENV = {
    "MALLOC_MMAP_THRESHOLD_": str(4 * 1024 * 1024),
    "MALLOC_TRIM_THRESHOLD_": str(32 * 1024 * 1024),
}


class ServeConfig(BaseModel):
    """What a replica needs besides the version: where the model lives and the limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Registered model name.")
    alias: str | None = Field(default=None, description="Alias followed, or None when pinned.")
    tracking_uri: str | None = Field(default=None, description="MLflow tracking URI.")
    limits: Limits = Field(default_factory=Limits)
    element_budget: int = Field(
        default=DEFAULT_ELEMENT_BUDGET,
        ge=1,
        description="Elements per model batch; larger requests run alone.",
    )
    replicas: int = Field(default=1, ge=1, description="Fixed replica count (no autoscale).")
    autoscale: tuple[int, int] | None = Field(default=None, description="(min, max) replicas.")
    num_cpus: float = Field(default=1.0, ge=0.0, description="Ray CPUs reserved per replica.")
    max_ongoing_requests: int = Field(
        # Many in flight per replica is what lets the element batcher form batches.
        default=64,
        ge=1,
    )
    poll_s: float = Field(default=5.0, gt=0.0, description="Seconds between alias checks.")
    runtime: Literal["torch", "onnx"] = Field(
        default="torch",
        description="torch: the PyTorch model; onnx: its ONNX graphs in onnxruntime (the "
        "version's logged setpipe export, else exported when the replica loads it).",
    )


api = FastAPI(
    title="setpipe",
    description="Predictions from a registered setpipe set model.",
    docs_url=None,
    redoc_url=None,
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": message})


async def _read_body(request: Request, cap: int, timeout_s: float) -> bytearray:
    """The body, refused with 413 as soon as the declared or the received size passes cap,
    and with 408 when it has not all arrived ``timeout_s`` seconds from now.

    Grown as bytes arrive, never allocated from the declared size: a client announcing
    64 MB and sending nothing costs nothing.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, f"Content-Length {declared!r} is not a byte count")
        if int(declared) > cap:
            raise BadRequest(
                413,
                f"request body of {int(declared)} bytes exceeds the limit of {cap} bytes "
                "(--max-body-bytes)",
            )
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > cap:
                    raise BadRequest(
                        413, f"request body exceeds the limit of {cap} bytes (--max-body-bytes)"
                    )
    except TimeoutError:
        expected = f"of {declared} bytes" if declared is not None else "bytes (chunked)"
        raise BadRequest(
            408,
            f"body: not received within {timeout_s:g} s (--request-timeout); {len(body)} "
            f"{expected} arrived",
        ) from None
    return body


@serve.deployment(name="SetModelServer")
@serve.ingress(api)
class SetModelServer:
    """One replica: the loaded model, the element batcher, the HTTP routes."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = ServeConfig.model_validate(config)
        self._loaded: Any = None  # LoadedSetModel; replaced whole, never mutated
        self._batcher: ElementBatcher | None = None
        self._swap = asyncio.Lock()
        self._follower: asyncio.Task | None = None

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Load the pinned version (Serve calls this before the replica takes traffic)."""
        version = str(user_config["version"])
        if self._config.alias is not None:
            try:
                # A replica started after the alias moved must not begin on the old version.
                version = await asyncio.to_thread(self._resolve_alias)
            except Exception as err:
                log.warning("cannot resolve @%s (%s); loading %s", self._config.alias, err, version)
        await self._load(version)
        if self._config.alias is not None and self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    def _resolve_alias(self) -> str:
        uri = f"models:/{self._config.name}@{self._config.alias}"
        return str(resolve(uri, self._config.tracking_uri)[1])

    async def _load(self, version: str) -> None:
        """Load ``version`` fully in a worker thread, then swap the one reference."""
        from setpipe.tracking.pyfunc import load_set_model

        async with self._swap:
            if self._loaded is not None and str(self._loaded.version) == version:
                return
            uri = f"models:/{self._config.name}/{version}"
            loader = load_set_model
            if self._config.runtime == "onnx":
                from setpipe.export.serving import load_onnx_model as loader
            loaded = await asyncio.to_thread(loader, uri, self._config.tracking_uri)
            self._loaded = loaded  # the swap: batches that start from now on use it
        log.info("serving %s version %s", self._config.name, version)

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self._config.poll_s)
            try:
                await self._load(await asyncio.to_thread(self._resolve_alias))
            except Exception as err:  # a flaky store must not stop the following
                log.warning("alias check failed, retrying in %.0f s: %s", self._config.poll_s, err)

    def _predict(self, batch: Any) -> tuple[Any, list[dict]]:
        loaded = self._loaded  # read once: the whole batch runs on this version
        # Several requests share a batch: each is checked for non-finite outputs on its own.
        return loaded, loaded.predict_batch(batch, allow_non_finite=True)

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/ready", responses={503: {"model": ErrorResponse}})
    async def ready(self) -> JSONResponse:
        if self._loaded is None:
            return _error(503, "no model loaded yet")
        return JSONResponse({"status": "ready", "version": self._loaded.version})

    @api.get("/model", response_model=ModelInfo, responses={503: {"model": ErrorResponse}})
    async def model(self) -> Any:
        loaded = self._loaded
        if loaded is None:
            return _error(503, "no model loaded yet")
        job = loaded.job
        return ModelInfo(
            name=loaded.name,
            version=loaded.version,
            alias=self._config.alias,
            task=job.model.task_names,
            element_features=job.data.elements.feature_names,
            context_features=list(job.data.context),
            num_classes=job.model.num_classes,
            pid=os.getpid(),
        )

    @api.post(
        "/predict",
        response_model=PredictResponse,
        responses={
            408: {"model": ErrorResponse},
            413: {"model": ErrorResponse},
            422: {"model": ErrorResponse},
            503: {"model": ErrorResponse},
        },
    )
    async def predict(self, request: Request) -> Any:
        """Body: ``{"sets": [{"features": {...}, "context": {...}}, ...]}`` (see schema.py)."""
        loaded = self._loaded
        if loaded is None:
            return _error(503, "no model loaded yet")
        limits = self._config.limits
        try:
            body = await _read_body(request, limits.max_body_bytes, limits.request_timeout_s)
            # Validated against the job of the version loaded now; versions of one
            # registered model share the job's input layout.
            if len(body) > _INLINE_PARSE_BYTES:
                parsed = await asyncio.to_thread(parse_request, body, loaded.job, limits)
                del body
                await asyncio.to_thread(loaded.check_inputs, parsed.batch)
            else:
                parsed = parse_request(body, loaded.job, limits)
                del body
                loaded.check_inputs(parsed.batch)
        except BadRequest as err:
            return _error(err.status, str(err))
        if self._batcher is None:
            self._batcher = ElementBatcher(self._predict, self._config.element_budget)
        ran, outputs = await self._batcher.submit(parsed.batch)
        bad = non_finite_sets(outputs)
        if bad:  # never handed to the JSON encoder (NaN is not JSON)
            return _error(
                422,
                "; ".join(f"sets[{i}]" for i in bad[:10])
                + f": the model's output is not finite (NaN or infinite). Likely cause: "
                f"{NON_FINITE_HINT}",
            )
        return JSONResponse(
            {"model": {"name": ran.name, "version": ran.version}, "predictions": outputs}
        )

    def __del__(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
        if self._batcher is not None:
            self._batcher.close()


def build_app(config: ServeConfig, version: str) -> serve.Application:
    """The application for one resolved version (replica options from the config)."""
    options: dict[str, Any] = {
        "user_config": {"version": str(version)},
        "max_ongoing_requests": config.max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": config.num_cpus,
            "runtime_env": {"env_vars": _REPLICA_ENV},  # read by glibc when the process starts
        },
    }
    if config.autoscale is not None:
        low, high = config.autoscale
        options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "initial_replicas": low,
            # Requests in flight per replica the autoscaler aims at; the batcher wants several.
            "target_ongoing_requests": 8,
        }
    else:
        options["num_replicas"] = config.replicas
    return SetModelServer.options(**options).bind(config.model_dump(mode="json"))


def app_config(args: dict[str, Any]) -> tuple[ServeConfig, str | None]:
    """A Serve config file's ``args:`` -> (ServeConfig, pinned version or None for an alias).

    ``args`` holds ``model_uri`` (models:/NAME@ALIAS or models:/NAME/VERSION), optionally
    ``tracking_uri`` (default $MLFLOW_TRACKING_URI), and any other ServeConfig field. Checks
    the text only; nothing is looked up in MLflow.
    """
    options = dict(args)
    model_uri = str(options.pop("model_uri", ""))
    parsed = parse_registry_uri(model_uri)
    if parsed is None:
        raise ServeError(f"serve config args.model_uri: {not_a_registered_uri(model_uri)}")
    name, alias, version = parsed
    tracking_uri = options.pop("tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        # A cluster has no work dir whose sqlite store could be meant.
        raise ServeError(
            "serve config args.tracking_uri: not given and $MLFLOW_TRACKING_URI is not set on "
            "the cluster; give the MLflow server, e.g. tracking_uri: http://mlflow:5000"
        )
    for taken in ("name", "alias"):
        if taken in options:
            raise ServeError(
                f"serve config args.{taken}: set by model_uri ({model_uri}); remove {taken}"
            )
    try:
        config = ServeConfig(name=name, alias=alias, tracking_uri=tracking_uri, **options)
    except ValidationError as err:
        problems = "; ".join(
            f"args.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
        )
        raise ServeError(f"serve config {problems}") from None
    return config, version


def app_builder(args: dict[str, Any]) -> serve.Application:
    """The app for a Serve config file (``serve deploy``, a RayService): see app_config.

    import_path: setpipe.serve.app:app_builder. An alias is resolved here, when the app is
    built on the cluster; the replicas then follow it.
    """
    config, version = app_config(args)
    if version is None:
        version = resolve(f"models:/{config.name}@{config.alias}", config.tracking_uri)[1]
    return build_app(config, version)


def deploy(config: ServeConfig, version: str) -> None:
    """Deploy the app pinned to ``version`` (replicas then follow ``config.alias``, if set)."""
    serve.run(build_app(config, version), name=APP_NAME, route_prefix="/")


def start(
    config: ServeConfig, version: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> str:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the app; returns its base URL."""
    serve.start(http_options={"host": host, "port": port})
    deploy(config, version)
    return f"http://{host}:{port}"
