"""Build, start and stop the grpc.aio server: service, health, reflection (v1 and v1alpha:
reflection.py), metrics.

Health reports SERVING only after the model has answered a warm-up generation. On SIGTERM:
health NOT_SERVING (load balancers stop sending), stop accepting, let in-flight streams finish
within `grace_s`, stop the engine and the metrics endpoint. A stream that reaches the service
while it drains, or that the drain cuts off, ends UNAVAILABLE: the client may retry elsewhere.
With `health_port`, the same health status is also served in plaintext on a listener of its
own (nothing else is served there), for probes that cannot speak TLS.

Every port is the server's alone: gRPC would otherwise share a port in use (SO_REUSEPORT) and
the kernel split connections between two servers. A port in use fails the start, before the
model loads when it can be seen then.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from prometheus_client import CollectorRegistry

from del_client import ans
from del_client.codec import pack_symbols, unpack_symbols
from del_client.mechanism import PrivacySpec
from del_client.parameters import DEFAULT_BITS, DEFAULT_DELTA
from del_client.proto import inference_pb2, inference_pb2_grpc
from del_client.sampling import Sampling

from .auth import TokenStore
from .classification import EncoderInput
from .engine_process import ProcessEngine
from .generation import FailedEvent, FinishEvent, PrivatePrompt
from .interceptors import server_interceptors
from .metrics import Metrics
from .reflection import enable_reflection
from .runtime import ServedModel, build_served_model
from .service import SplitInferenceService
from .settings import SettingError, Settings, check_files, check_ports
from .tls import bind

log = logging.getLogger(__name__)
SERVICE_NAME = inference_pb2.DESCRIPTOR.services_by_name["SplitInference"].full_name
STREAM_METHODS = (f"/{SERVICE_NAME}/Generate", f"/{SERVICE_NAME}/Classify")
HEALTH_LISTENER_MAX_RPCS = 16
EXCLUSIVE_PORT = ("grpc.so_reuseport", 0)


@dataclass(eq=False)
class RunningServer:
    """A started server: its bound ports, its metrics, and how to stop it."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    metrics: Metrics
    served: ServedModel
    service: SplitInferenceService
    health: health_aio.HealthServicer
    settings: Settings
    _metrics_http: object | None
    health_port: int | None = None
    _health_server: grpc.aio.Server | None = None

    async def stop(self, grace_s: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        self.service.drain()
        await self.server.stop(self.settings.grace_s if grace_s is None else grace_s)
        if self._health_server is not None:  # probes see NOT_SERVING until the drain ends
            await self._health_server.stop(0)
        self.service.close()
        if self.served.engine is not None:
            await asyncio.to_thread(self.served.engine.stop)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()


def _connection_options(settings: Settings) -> list[tuple[str, int]]:
    """Keepalive and connection-age channel arguments, in the milliseconds gRPC expects."""
    options = [
        ("grpc.keepalive_time_ms", round(settings.keepalive_time_s * 1000)),
        ("grpc.keepalive_timeout_ms", round(settings.keepalive_timeout_s * 1000)),
    ]
    if settings.max_connection_age_s > 0:  # gRPC's own default is "never"
        options += [
            ("grpc.max_connection_age_ms", round(settings.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", round(settings.max_connection_age_grace_s * 1000)),
        ]
    return options


async def _start_health_listener(
    health: health_aio.HealthServicer, settings: Settings
) -> tuple[grpc.aio.Server, int]:
    """A plaintext server with the health service alone: no tokens, no TLS, no model.

    Probes send a Check now and then; a few concurrent calls are plenty, and the cap keeps
    a flood of unauthenticated Watch streams from holding resources.
    """
    server = grpc.aio.server(
        maximum_concurrent_rpcs=HEALTH_LISTENER_MAX_RPCS, options=[EXCLUSIVE_PORT]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    with _bind_failure("health_port", settings):
        port = server.add_insecure_port(f"{settings.host}:{settings.health_port}")
    await server.start()
    return server, port


@contextmanager
def _bind_failure(name: str, settings: Settings) -> Iterator[None]:
    """A port that cannot be bound (taken while the model loaded) fails naming its setting."""
    try:
        yield
    except (RuntimeError, OSError) as exc:  # gRPC: "Failed to bind"; http.server: EADDRINUSE
        port, host = getattr(settings, name), settings.host
        raise SettingError(
            lambda n: (
                f"{n(name)} {port} cannot be bound on {host}: another process listens "
                f"there, or {host} is not an address of this machine"
            )
        ) from exc


async def _warm_up(served: ServedModel, servicer: SplitInferenceService) -> None:
    """One tiny generation (or classification) through the model, the frame decoders compiled,
    the accountant loaded (numba and scipy load on first use) and every level's symbol model
    computed, so the first client pays no start-up cost."""
    bits = DEFAULT_BITS
    await asyncio.to_thread(unpack_symbols, pack_symbols(np.zeros(8, np.uint8), bits), bits, 8)
    spec = PrivacySpec.from_mu(mu=1.0, dim=served.adapter.projection_dim, bits=bits, clip=1.0)
    await asyncio.to_thread(spec.epsilon, delta=DEFAULT_DELTA)
    for level_spec in [level.spec for level in served.levels] or [spec]:
        model = await servicer.symbol_model(level_spec)
    symbols = np.zeros((1, spec.dim), np.uint8)
    await asyncio.to_thread(ans.decode, ans.encode(symbols, model), model, 1)
    x_hat = np.zeros((1, served.adapter.projection_dim), dtype=np.float32)
    if served.classifier is not None:
        task = served.adapter.task
        head = next(iter(task.heads.values()), task.clean_head)
        decoded = torch.from_numpy(x_hat)
        await served.classifier.classify(
            EncoderInput(served.adapter.deproject(decoded), None, head, decoded)
        )
        return
    level_spec = served.levels[0].spec if served.levels else spec
    symbols = np.zeros((1, level_spec.dim), np.uint8)
    inputs = served.prompts.build(PrivatePrompt(symbols, level_spec, mu=None)).inputs
    handle = served.engine.submit("warm-up", inputs, Sampling(max_new_tokens=2, temperature=0))
    while not isinstance(event := await handle.events.get(), FinishEvent):
        if isinstance(event, FailedEvent):
            raise event.error


async def _not_serving(health: health_aio.HealthServicer) -> None:
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)


async def start(settings: Settings, *, served: ServedModel | None = None) -> RunningServer:
    """Load (unless given), warm up, and serve; returns once the server is SERVING."""
    # A missing file, a port in use or a bad token file fails before the model loads.
    check_files(settings)
    check_ports(settings)
    tokens = TokenStore.from_settings(settings)
    served = served or await asyncio.to_thread(build_served_model, settings)
    registry = CollectorRegistry()
    task = served.adapter.task
    metrics = Metrics(
        registry,
        max_tokens=max(settings.max_prompt_tokens, settings.max_new_tokens),
        levels=[f"{mu:g}" for mu in {*served.adapter.soft_prompts, *(task.heads if task else ())}],
        task=served.task,
        model=served.loaded.model_id,
        labels=task.labels if task else (),
    )
    if (engine := served.engine) is not None:
        metrics.track_engine(
            lambda: engine.running, lambda: engine.waiting, lambda: engine.kv_cache_bytes
        )
    else:
        batcher = served.classifier
        metrics.track_engine(lambda: batcher.running, lambda: batcher.waiting)
    server = grpc.aio.server(
        interceptors=server_interceptors(
            tokens, lambda method: method in STREAM_METHODS and metrics.refused("UNAUTHENTICATED")
        ),
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            EXCLUSIVE_PORT,
            *_connection_options(settings),
        ],
    )
    servicer = SplitInferenceService(served, settings, metrics)
    inference_pb2_grpc.add_SplitInferenceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    enable_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server
    )
    with _bind_failure("port", settings):
        port = bind(server, settings)  # plaintext, TLS or mutual TLS (tls.py)
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if served.engine is not None:
        served.engine.start()
    await server.start()
    running = RunningServer(server, port, None, metrics, served, servicer, health, settings, None)
    try:
        if settings.health_port >= 0:
            running._health_server, running.health_port = await _start_health_listener(
                health, settings
            )
        await _warm_up(served, servicer)
        if settings.metrics_port >= 0:
            with _bind_failure("metrics_port", settings):
                running._metrics_http = metrics.serve(settings.host, settings.metrics_port)
            running.metrics_port = running._metrics_http.server_port
    except BaseException:
        await running.stop(grace_s=0)  # nothing half-started outlives a failed start
        raise
    for service in ("", SERVICE_NAME):
        await health.set(service, health_pb2.HealthCheckResponse.SERVING)
    if isinstance(engine, ProcessEngine):
        loop = asyncio.get_running_loop()
        engine.on_death = lambda: asyncio.run_coroutine_threadsafe(_not_serving(health), loop)
    log.info(
        "serving",
        extra={
            "port": port,
            "metrics_port": running.metrics_port,
            "health_port": running.health_port,
        },
    )
    return running


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start(settings)
    print(
        f"del-server listening on {settings.host}:{running.port} (metrics :{running.metrics_port})",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_s": settings.grace_s})
    await running.stop()
