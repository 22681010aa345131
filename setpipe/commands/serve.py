"""`setpipe serve MODEL_URI`: serve a registered model over HTTP with Ray Serve."""

from __future__ import annotations

import argparse
import math
import signal
import time

from setpipe import _compat
from setpipe.commands._model_args import add_model_arguments, positive_int, tracking_uri
from setpipe.data.request import Limits
from setpipe.errors import ServeError
from setpipe.serve.ingress import (
    DEFAULT_INGRESS,
    INGRESSES,
    check_http_port_free,
    check_ports_free,
    plan_ports,
    use_local_ingress,
)
from setpipe.spec.models import DEFAULT_ELEMENT_BUDGET

HELP = "Serve a registered model over HTTP (Ray Serve), following its alias as it moves."


def _autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not sep or not low.isdigit() or not high.isdigit() or not 1 <= int(low) <= int(high):
        raise argparse.ArgumentTypeError(f"expected MIN:MAX with 1 <= MIN <= MAX, found {text!r}")
    return int(low), int(high)


def _port_range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep or not low.isdigit() or not high.isdigit():
        raise argparse.ArgumentTypeError(f"expected LO-HI, found {text!r}")
    if not 1024 <= int(low) <= int(high) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected LO-HI with 1024 <= LO <= HI <= 65535, found {text!r}"
        )
    return int(low), int(high)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, found {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument(
        "--host",
        default="127.0.0.1",  # = serve.app.DEFAULT_HOST (not imported: --help stays fast)
        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)",
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument(
        "--ingress",
        choices=INGRESSES,
        default=None,
        help="how HTTP reaches the replicas of the local Ray this starts: haproxy (default; "
        "Ray Serve's HAProxy ingress straight to the replicas) or proxy (Serve's Python "
        "proxy actor). A cluster (--address) uses what its nodes were started with",
    )
    parser.add_argument(
        "--ray-port-range",
        type=_port_range,
        metavar="LO-HI",
        help="the local Ray's ports, from this range: its GCS, dashboard and metrics "
        "exporter, HAProxy's stats and metrics pages, Serve's fallback proxy, the replicas' "
        "own servers (default: free ports). Give each server on a machine its own range, "
        "below the kernel's ephemeral ports (32768 and up on Linux)",
    )
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--replicas", type=positive_int, default=1, help="replicas (default 1)")
    scale.add_argument(
        "--autoscale", type=_autoscale, metavar="MIN:MAX", help="autoscale between MIN and MAX"
    )
    limits = {name: field.default for name, field in Limits.model_fields.items()}
    parser.add_argument(
        "--max-sets", type=positive_int, help=f"sets per request (default {limits['max_sets']})"
    )
    parser.add_argument(
        "--max-elements-per-set",
        type=positive_int,
        help=f"elements per set (default {limits['max_elements_per_set']})",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=positive_int,
        help=f"request body bytes (default {limits['max_body_bytes']})",
    )
    parser.add_argument(
        "--batch-elements",
        type=positive_int,
        default=DEFAULT_ELEMENT_BUDGET,
        help="element budget of one model batch across concurrent requests "
        f"(default {DEFAULT_ELEMENT_BUDGET})",
    )
    parser.add_argument(
        "--runtime",
        choices=("torch", "onnx"),
        default="torch",
        help="torch (default): the PyTorch model; onnx: its ONNX graphs in onnxruntime "
        "(the version's logged setpipe export, else exported when a replica loads it)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=float,
        default=5.0,
        help="how often the alias is re-resolved (default 5)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="time a client has to send a whole request; a slower or stalled one gets 408 "
        f"and its connection is closed (default {limits['request_timeout_s']:g})",
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM (a container stop, kill) shuts down like Ctrl-C


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from setpipe.serve.app import ServeConfig, start
    from setpipe.tracking.store import parse_registry_uri, resolve

    if args.address is not None and args.ingress is not None:
        raise ServeError(
            f"--ingress {args.ingress} with --address: a cluster's ingress is set where its "
            "nodes start (RAY_SERVE_ENABLE_HA_PROXY=1 and RAY_SERVE_THROUGHPUT_OPTIMIZED=1 "
            "for haproxy, as deploy/kuberay/raycluster.yaml does); drop --ingress"
        )
    if args.address is not None and args.ray_port_range is not None:
        raise ServeError(
            "--ray-port-range with --address: a cluster's ports are set where its nodes "
            "start; drop --ray-port-range"
        )
    ports = None
    if args.ray_port_range is not None:
        replicas = args.autoscale[1] if args.autoscale else args.replicas
        ports = plan_ports(*args.ray_port_range, replicas=replicas, http_port=args.port)
        check_ports_free(ports)
    uri = tracking_uri(args)
    name, version = resolve(args.model_uri, uri)
    limits = {
        key: value
        for key, value in (
            ("max_sets", args.max_sets),
            ("max_elements_per_set", args.max_elements_per_set),
            ("max_body_bytes", args.max_body_bytes),
            ("request_timeout_s", args.request_timeout),
        )
        if value is not None
    }
    config = ServeConfig(
        name=name,
        alias=parse_registry_uri(args.model_uri)[1],  # resolve() accepted it: not None
        tracking_uri=uri,
        limits=Limits(**limits),
        element_budget=args.batch_elements,
        replicas=args.replicas,
        autoscale=args.autoscale,
        poll_s=args.poll_seconds,
        runtime=args.runtime,
    )
    if args.address is None:
        check_http_port_free(args.host, args.port)
        timeout = config.limits.request_timeout_s
        use_local_ingress(
            args.ingress or DEFAULT_INGRESS, args.host, ports, request_timeout_s=timeout
        )
    # A new local Ray listens on 127.0.0.1 only and turns token auth on (its token file
    # 0600); a cluster keeps its own settings.
    _compat.init_ray(
        args.address,
        log_to_driver=False,
        serve=True,
        gcs_port=ports.gcs if ports else None,
        metrics_export_port=ports.metrics_export if ports else None,
        **({"dashboard_port": ports.dashboard} if ports else {}),
    )
    try:
        url = start(config, version, host=args.host, port=args.port)
        following = f", following @{config.alias}" if config.alias else ""
        print(
            f"serving {name} version {version}{following} at {url} "
            "(POST /predict, GET /health /ready /model); Ctrl-C stops",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    except (RuntimeError, ray.exceptions.RayError) as err:
        # Serve reports a failed deploy as a RuntimeError; a proxy that dies while starting
        # (killed when its health check times out on a loaded machine) as ActorDiedError.
        # A task error's own text repeats the remote traceback: say its cause.
        cause = getattr(err, "cause", None) or err
        raise ServeError(f"cannot serve {args.model_uri}: {cause}") from None
    finally:
        if args.address is None:
            serve.shutdown()
        ray.shutdown()
    return 0
