"""Running the application: checks before anything loads (the host and the API key, the export folders, the port),
then uvicorn on the bound socket. SIGTERM (and Ctrl-C) stop taking new connections, let the requests in flight finish
(up to ``graceful_timeout`` seconds), and the process exits 0."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys

from cs_lightning.errors import ConfigError
from cs_lightning.serving.app import Service, Settings, build_app

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
API_KEY_ENV = "CS_SERVE_API_KEY"


def check_host(host: str, api_key: str | None) -> None:
    """Anything but this machine's loopback needs an API key."""
    if host not in LOCAL_HOSTS and not api_key:
        raise ConfigError("--host", f"{host} accepts connections from other machines, so it needs an API key",
                          f"give --api-key KEY or set {API_KEY_ENV}, or bind 127.0.0.1")


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as err:
        raise ConfigError("--port" if getattr(err, "errno", None) in (98, 48, 13) else "--host",
                          f"cannot listen on {host}:{port} ({err.strerror or err})",
                          "choose another --port, or stop what uses it") from None
    sock.set_inheritable(True)
    return sock


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a SIGTERM it has drained for ends the process with 0 rather than being
        raised again once the server has stopped (uvicorn's own behaviour: the process would die by the signal)."""

        @contextlib.contextmanager
        def capture_signals(self):
            handled = (signal.SIGINT, signal.SIGTERM)
            original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def serve(intent: str | None, reply: str | None, host: str = "127.0.0.1", port: int = 8000, onnx: bool = False,
          api_key: str | None = None, device: str = "auto", max_batch_size: int = 32, batch_timeout: float = 0.005,
          max_chars: int = 2000, max_body_bytes: int = 1 << 20, rules: str | None = None, domain: str | None = None,
          graceful_timeout: float = 30.0, log_level: str = "warning") -> int:
    """Serve the exports until SIGTERM; returns the exit status."""
    import uvicorn

    from cs_lightning.serving.chat import ChatAPI
    from cs_lightning.serving.intent import IntentAPI

    if not intent and not reply:
        raise ConfigError("--intent", "nothing to serve", "give --intent DIR, --reply DIR or both")
    check_host(host, api_key)
    if onnx and not intent:
        raise ConfigError("--onnx", "ONNX Runtime serves intent models only", "give --intent DIR, or drop --onnx")
    device = resolve_device(device)
    intent_api = IntentAPI(intent, onnx=onnx, device=device, max_chars=max_chars) if intent else None
    chat_api = ChatAPI(reply, device=device, max_chars=max_chars, rules_file=rules, domain=domain) if reply else None
    sock = bind(host, port)
    port = sock.getsockname()[1]

    failure: list[BaseException] = []
    server_box: list = []

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        if server_box:
            server_box[0].should_exit = True

    service = Service(intent_api, chat_api, Settings(api_key, max_batch_size, batch_timeout, max_body_bytes),
                      on_load_error=on_load_error)
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(f"{task} {name}" for task, name in service.models().items())

    def on_ready() -> None:
        print(f"cs-serve: ready at http://{shown}:{port} ({names}{', ONNX Runtime' if onnx else ''} on {device})",
              flush=True)

    service.on_ready = on_ready
    config = uvicorn.Config(build_app(service), host=host, port=port, log_level=log_level, access_log=False,
                            timeout_graceful_shutdown=graceful_timeout, lifespan="on")
    server = _server_class()(config)
    server_box.append(server)
    print(f"cs-serve: loading {names} on {device}; listening on http://{shown}:{port} (GET /health says when ready)",
          flush=True)
    server.run(sockets=[sock])
    if failure:
        exc = failure[0]
        from cs_lightning.errors import user_error

        if user_error(exc):
            raise exc
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError("--intent" if intent_api and not getattr(intent_api, "runtime", None) else "--reply",
                          f"could not load the model ({type(exc).__name__}: {first})",
                          "check the export folder, or export it again") from None
    print("cs-serve: stopped", file=sys.stderr, flush=True)
    return 0
