"""`ils serve`: run the online service (Ray Serve + web page) locally until Ctrl-C."""

from __future__ import annotations

HELP = "run the segmentation service (Ray Serve, web page at /) until interrupted"
DESCRIPTION = (
    "Start a loopback-only Ray (or join cfg.ray.address), deploy the ILS service on "
    "serve.host:serve.port and block until Ctrl-C, then shut Serve and Ray down cleanly. "
    "API keys: ILS_API_KEYS=key1,key2 or serve.api_keys_file (or serve.allow_anonymous=true)."
)


def add_arguments(parser) -> None:
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: serve.port)")


def run(args, cfg) -> int:
    import logging
    import signal
    import threading

    from serve.app import start_service

    log = logging.getLogger("ils.serve")
    handle = start_service(cfg, port=args.port)
    print(f"ils serve: ready at {handle.url}/ (model: {handle.url}/readyz); Ctrl-C to stop", flush=True)
    stop = threading.Event()
    # Explicit handlers: Ctrl-C/SIGTERM stop the loop (a shell may have left SIGINT ignored).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        log.info("stopping the service")
        handle.stop(shutdown_ray=True)
    print("ils serve: stopped", flush=True)
    return 0
