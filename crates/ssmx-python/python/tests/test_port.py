"""Port forwarding with real HTTP requests through the forwarded local port."""

import asyncio
import functools
import gc
import http.client
import http.server
import socket
import threading

import pytest

import ssmx
from helpers import DEADLINE

BODY = b"served through ssmx\n" * 1000


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        payload = BODY + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def get(port: int, path: str) -> bytes:
    """One HTTP GET to 127.0.0.1:port (directly: no proxy from the environment)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        assert reply.status == 200
        return reply.read()
    finally:
        connection.close()


async def fetch(port: int, path: str) -> bytes:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(get, port, path))


async def test_http_through_forwarded_port(manager, stack, http_server):
    forward = await manager.port_forward(stack.instance_id, http_server)
    async with forward:
        assert isinstance(forward, ssmx.PortForward)
        assert forward.local_port > 0
        assert forward.session_id in stack.active_sessions()
        assert await fetch(forward.local_port, "/first") == BODY + b"/first"
        # Several connections at once through the one session.
        paths = [f"/parallel/{i}" for i in range(5)]
        bodies = await asyncio.wait_for(
            asyncio.gather(*(fetch(forward.local_port, p) for p in paths)), DEADLINE
        )
        assert bodies == [BODY + p.encode() for p in paths]
    assert forward.closed
    stack.wait_until_ended({forward.session_id})
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", forward.local_port), timeout=DEADLINE).close()


async def test_remote_host_and_explicit_close(manager, stack, http_server):
    forward = await manager.port_forward(stack.instance_id, http_server, host="127.0.0.1")
    assert await fetch(forward.local_port, "/remote-host") == BODY + b"/remote-host"
    forward.close()
    await asyncio.wait_for(forward.wait_closed(), DEADLINE)
    assert forward.closed
    stack.wait_until_ended({forward.session_id})


async def test_remote_port_must_be_valid(manager, stack):
    with pytest.raises(ValueError):
        await manager.port_forward(stack.instance_id, 0)
    with pytest.raises(OverflowError):
        await manager.port_forward(stack.instance_id, 70000)


async def test_abandoned_forward_is_closed(manager, stack, http_server):
    forward = await manager.port_forward(stack.instance_id, http_server)
    session_id, local_port = forward.session_id, forward.local_port
    del forward
    gc.collect()
    stack.wait_until_ended({session_id})
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", local_port), timeout=DEADLINE).close()
