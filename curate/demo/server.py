"""A loopback HTTP server for the demo pool: serves its files, plus 404s and slow answers.

`serve(root)` is a context manager that serves the directory `root` (the demo pool
directory, so `{base}/images/x.jpg` is `root/images/x.jpg`) on 127.0.0.1 from a daemon
thread and yields the base URL. `/missing/...` and absent files answer 404; `/slow/...`
answers 404 only after `slow_seconds`, so a downloader's timeout fires first; `/flaky/x.jpg`
answers 503 until `root/x.jpg` exists, then the file (a transient failure to retry). Paths with
`.` or `..` segments are refused (403) and nothing outside `root` is ever read. The wait is
on an Event that shutdown sets, so leaving the context never hangs on a slow request.

`python -m curate.demo.server ROOT --port N` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import mimetypes
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


def resolve_request_path(root: Path, request_path: str) -> Path | None:
    """The file under `root` a request path names, or None when it tries to leave `root`."""
    segments = unquote(urlsplit(request_path).path).split("/")
    if any(segment in (".", "..") or "\\" in segment or "\x00" in segment for segment in segments):
        return None
    target = (root / "/".join(s for s in segments if s)).resolve()
    return target if target == root or root in target.parents else None


def route(root: Path, request_path: str) -> Path | HTTPStatus:
    """What a GET of `request_path` answers: the file to send, or an error status."""
    path = urlsplit(request_path).path
    if path.startswith(("/slow/", "/missing/")):
        return HTTPStatus.NOT_FOUND
    flaky = path.startswith("/flaky/")  # 503 until the file exists: a transient failure
    target = resolve_request_path(root, request_path[len("/flaky"):] if flaky else request_path)
    if flaky and (target is None or not target.is_file()):
        return HTTPStatus.SERVICE_UNAVAILABLE
    if target is None:
        return HTTPStatus.FORBIDDEN
    return target if target.is_file() else HTTPStatus.NOT_FOUND


class _Server(ThreadingHTTPServer):
    # img2dataset opens processes x threads connections at once; the default listen backlog
    # of 5 drops the rest, and the kernel's SYN retries (1 s, 3 s, ...) turn into timeouts
    request_queue_size = 512
    daemon_threads = True


def _make_handler(root: Path, slow_seconds: float, stopping: threading.Event) -> type[BaseHTTPRequestHandler]:
    class DemoHandler(BaseHTTPRequestHandler):
        server_version = "curate-demo"

        def do_GET(self) -> None:  # http.server's naming
            self._answer(send_body=True)

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def _answer(self, send_body: bool) -> None:
            path = urlsplit(self.path).path
            if path.startswith("/slow/"):
                stopping.wait(slow_seconds)
            answer = route(root, self.path)
            if isinstance(answer, HTTPStatus):
                self._status(answer)
            else:
                self._file(answer, send_body)

        def _status(self, status: HTTPStatus) -> None:
            body = f"{status.value} {status.phrase}\n".encode()
            with contextlib.suppress(ConnectionError):
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def _file(self, target: Path, send_body: bool) -> None:
            data = target.read_bytes()
            with contextlib.suppress(ConnectionError):
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", mimetypes.guess_type(target.name)[0] or "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if send_body:
                    self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # the base class's parameter name
            log.debug("%s " + format, self.address_string(), *args)

    return DemoHandler


@contextlib.contextmanager
def serve(root: Path, slow_seconds: float = 30.0, port: int = 0) -> Iterator[str]:
    """Serve `root` on 127.0.0.1:`port` (0 = any free port) and yield `http://127.0.0.1:<port>`."""
    root = Path(root).resolve()
    stopping = threading.Event()
    server = _Server((HOST, port), _make_handler(root, slow_seconds, stopping))
    thread = threading.Thread(target=server.serve_forever, name="demo-server", daemon=True)
    thread.start()
    base_url = f"http://{HOST}:{server.server_address[1]}"
    log.info("demo server for %s at %s", root, base_url)
    try:
        yield base_url
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve a demo pool directory on 127.0.0.1.")
    parser.add_argument("root", type=Path, help="the demo pool directory (holds images/)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--slow-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with serve(args.root, args.slow_seconds, args.port):
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
