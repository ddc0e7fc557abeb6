"""The embedded AWS emulator: moto's ThreadedMotoServer on 127.0.0.1 (with :mod:`catalens_tools.local.moto_fixes`).

moto's own ``start()`` binds the port inside its thread; when the port is taken the thread dies and ``start()`` waits
forever. We bind in the caller's thread instead, so a port conflict surfaces at once as one clear error.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from catalens.errors import CatalensError

DEFAULT_MOTO_PORT = 4566


class PortInUseError(CatalensError):
    """A local port the stack needs is already taken by another program."""

    code = "port_in_use"


def ensure_port_free(host: str, port: int, what: str, option: str) -> None:
    """Raise :class:`PortInUseError` naming the port, the service and the option to change it, if ``port`` is taken."""
    if port == 0:
        return
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is not a conflict
    try:
        probe.bind((host, port))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise PortInUseError(
                f"port {port} on {host} is already in use ({what}); stop the other program or choose another with "
                f"{option} N"
            ) from None
        raise
    finally:
        probe.close()


class _QuietRequestHandler(MotoRequestHandler):
    """moto's handler without werkzeug's one-line-per-request access log (the stack's terminal stays readable)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class LocalMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer that fails fast on a taken port and logs no access lines.

    Parameters
    ----------
    port:
        TCP port on 127.0.0.1; 0 picks a free one (read it back with :attr:`endpoint_url`).
    """

    def __init__(self, port: int = DEFAULT_MOTO_PORT, host: str = "127.0.0.1") -> None:
        super().__init__(ip_address=host, port=port, verbose=False)

    def start(self) -> None:
        from catalens_tools.local import moto_fixes

        self._shaped_notifications = not moto_fixes.notifications_shaped()  # this server installed the shape
        moto_fixes.apply()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        ensure_port_free(self._ip_address, self._port, "AWS emulator", "--moto-port")
        app = DomainDispatcherApplication(create_backend_app)
        try:
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=_QuietRequestHandler)
        except SystemExit:  # werkzeug prints and exits on a bind error; we checked first, so this is a lost race
            raise PortInUseError(f"port {self._port} on {self._ip_address} is already in use (AWS emulator)") from None
        self._server_ready_event.set()
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto-server", daemon=True)
        self._thread.start()

    @property
    def endpoint_url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Stop serving, and give moto its own notification shape back if this server installed it."""
        from catalens_tools.local import moto_fixes

        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if getattr(self, "_shaped_notifications", False):
            moto_fixes.remove_notification_shape()
