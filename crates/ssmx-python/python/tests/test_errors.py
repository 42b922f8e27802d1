"""Every exception type, cancellation and clean-up of abandoned sessions."""

import asyncio
import builtins
import gc
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

import ssmx
from helpers import BAD_PROFILE, DEADLINE, PROFILE, REGION, wait_for


def test_hierarchy():
    for cls in (ssmx.AuthError, ssmx.TargetNotConnected, ssmx.ProtocolError, ssmx.TimeoutError):
        assert issubclass(cls, ssmx.SsmxError)
        assert cls.__module__ == "ssmx"
        assert cls.__doc__
    assert issubclass(ssmx.SsmxError, Exception)
    assert issubclass(ssmx.TimeoutError, builtins.TimeoutError)


async def test_unknown_target_is_not_connected(manager):
    with pytest.raises(ssmx.TargetNotConnected, match="mi-00000000000000000"):
        await manager.exec("mi-00000000000000000", "true")


async def test_wrong_credentials_are_an_auth_error(stack):
    impostor = ssmx.SessionManager(profile=BAD_PROFILE, endpoint_url=stack.url)
    with pytest.raises(ssmx.AuthError):
        await impostor.exec(stack.instance_id, "true")
    with pytest.raises(ssmx.AuthError):
        await impostor.start_session(stack.instance_id)


async def test_unknown_document_is_an_ssmx_error(manager, stack):
    with pytest.raises(ssmx.SsmxError) as raised:
        await manager.start_session(stack.instance_id, document_name="ssmx-no-such-document")
    assert type(raised.value) is ssmx.SsmxError


def test_bad_arguments():
    with pytest.raises(ValueError):
        ssmx.SessionManager(profile=PROFILE, timeout=0)
    with pytest.raises(TypeError):
        ssmx.SessionManager(PROFILE, REGION, "http://127.0.0.1:9", 5.0)


async def test_bad_parameters_are_a_type_error(manager, stack):
    with pytest.raises(TypeError):
        await manager.start_session(stack.instance_id, parameters={"command": 5})


@pytest.fixture
def unresponsive_endpoint():
    """A TCP port that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


async def test_timeout_is_a_timeout_error(unresponsive_endpoint):
    manager = ssmx.SessionManager(profile=PROFILE, endpoint_url=unresponsive_endpoint, timeout=0.5)
    with pytest.raises(ssmx.TimeoutError) as raised:
        await asyncio.wait_for(manager.exec("mi-00000000000000000", "true"), DEADLINE)
    # Caught by handlers for either base.
    assert isinstance(raised.value, builtins.TimeoutError)
    assert isinstance(raised.value, ssmx.SsmxError)


class IncompleteStartSession(http.server.BaseHTTPRequestHandler):
    """An SSM endpoint whose StartSession response lacks the StreamUrl the protocol needs."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"SessionId": "pytest-incomplete", "TokenValue": "token"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


async def test_incomplete_service_response_is_a_protocol_error():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), IncompleteStartSession)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        manager = ssmx.SessionManager(
            profile=PROFILE, endpoint_url=f"http://127.0.0.1:{server.server_address[1]}"
        )
        with pytest.raises(ssmx.ProtocolError, match="StreamUrl"):
            await manager.start_session("mi-00000000000000000")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def running(marker: str) -> bool:
    """Whether a process on this machine has `marker` in its command line."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                return True
        except OSError:
            continue
    return False


async def test_cancelling_the_task_ends_the_remote_command(manager, stack):
    marker = "3599.25"  # an unusual duration: identifies the remote process
    before = stack.active_sessions()
    task = asyncio.create_task(manager.exec(stack.instance_id, f"sleep {marker}"))
    started = await asyncio.get_running_loop().run_in_executor(
        None, lambda: wait_for("the command to run", lambda: running(f"sleep\0{marker}"))
    )
    assert started
    new = stack.active_sessions() - before
    assert new, "the command's session is active"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    stack.wait_until_ended(new)
    wait_for("the remote command to stop", lambda: not running(f"sleep\0{marker}"))


async def test_abandoned_session_is_ended(manager, stack):
    session = await manager.start_session(stack.instance_id)
    session_id = session.session_id
    del session
    gc.collect()
    stack.wait_until_ended({session_id})
