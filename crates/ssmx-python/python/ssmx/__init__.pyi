"""Type stubs for the ssmx package (the native module ssmx._ssmx)."""

import builtins
from types import TracebackType
from typing import AsyncIterator, Dict, List, Optional, Sequence, Type, Union

__version__: str

class SsmxError(Exception):
    """Base class of every error raised by ssmx."""

class AuthError(SsmxError):
    """The credentials were refused or lack permission for the operation."""

class TargetNotConnected(SsmxError):
    """The target has no agent connected to the service."""

class ProtocolError(SsmxError):
    """The service or the agent broke the Session Manager protocol."""

class TimeoutError(SsmxError, builtins.TimeoutError):
    """An operation did not finish in time. Also a builtin TimeoutError."""

class ExecResult:
    """What a command produced."""

    @property
    def exit_code(self) -> Optional[int]:
        """The command's exit status, or None if the agent did not report one."""
    @property
    def stdout(self) -> bytes:
        """Everything the command wrote to standard output."""
    @property
    def stderr(self) -> bytes:
        """Everything the command wrote to standard error."""

class OutputStream(AsyncIterator[bytes]):
    """Async iterator over a session's output, from Session.output()."""

    def __aiter__(self) -> "OutputStream": ...
    async def __anext__(self) -> bytes: ...

class Session:
    """A started session; an async context manager that ends the session on exit."""

    @property
    def session_id(self) -> str:
        """The session id."""
    @property
    def target(self) -> str:
        """The target the session runs on."""
    @property
    def encrypted(self) -> bool:
        """Whether the session's data is encrypted end to end with a KMS data key."""
    async def send(self, data: Union[bytes, bytearray]) -> None:
        """Sends input (keystrokes: end a command line with b"\\r")."""
    def output(self) -> OutputStream:
        """An async iterator over the session's output, chunk by chunk, until it ends."""
    async def resize(self, rows: int, cols: int) -> None:
        """Tells the agent the terminal size."""
    async def wait(self) -> Optional[int]:
        """Waits until the session ends; its exit code, or None for types without one."""
    async def terminate(self) -> None:
        """Ends the session through the SSM TerminateSession API."""
    async def __aenter__(self) -> "Session": ...
    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class PortForward:
    """A forwarded local port; an async context manager that closes it on exit."""

    @property
    def local_port(self) -> int:
        """The local TCP port (on 127.0.0.1) that is forwarded."""
    @property
    def session_id(self) -> str:
        """The port session's id."""
    @property
    def target(self) -> str:
        """The target the session runs on."""
    @property
    def closed(self) -> bool:
        """Whether forwarding has stopped (closed, or the session ended)."""
    def close(self) -> None:
        """Stops listening, drops open connections and ends the session (returns at once)."""
    async def wait_closed(self) -> None:
        """Waits until forwarding has stopped; raises if the session failed."""
    async def __aenter__(self) -> "PortForward": ...
    async def __aexit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class SessionManager:
    """Starts Session Manager sessions through the SSM API of AWS or of an ssmx gateway."""

    def __init__(
        self,
        profile: Optional[str] = None,
        region: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> None: ...
    async def start_session(
        self,
        target: str,
        document_name: Optional[str] = None,
        parameters: Optional[Dict[str, Union[str, Sequence[str]]]] = None,
    ) -> Session:
        """Starts a session on target and waits until it is ready."""
    async def exec(self, target: str, command: str) -> ExecResult:
        """Runs command on target; its exit code, stdout and stderr."""
    async def port_forward(
        self,
        target: str,
        remote_port: int,
        local_port: int = 0,
        host: Optional[str] = None,
    ) -> PortForward:
        """Forwards 127.0.0.1:local_port to remote_port on the target (or on host)."""

__all__: List[str]
