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
    stop = threading.Event()

    def on_signal(*_):
        stop.set()

    def install() -> None:
        # Ctrl-C/SIGTERM stop the loop (a shell may leave SIGINT ignored; ray.init replaces SIGTERM's)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)

    install()
    handle = None
    try:
        handle = start_service(cfg, port=args.port)
        install()
        print(f"ils serve: ready at {handle.url}/ (model: {handle.url}/readyz); Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        log.info("stopping the service")
        if handle is not None:
            handle.stop(shutdown_ray=True)
        else:
            import ray
            from ray import serve

            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
    print("ils serve: stopped", flush=True)
    return 0
