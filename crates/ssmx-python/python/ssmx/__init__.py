"""asyncio client for AWS Systems Manager Session Manager.

Works against AWS and against a self-hosted ssmx gateway: interactive sessions, commands with
separate output streams and exit codes, and port forwarding, all speaking the Session Manager
wire protocol from Rust. Every coroutine releases the GIL while it waits; cancelling the task
that awaits one cancels the work behind it.

Example::

    import asyncio
    import ssmx

    async def main():
        manager = ssmx.SessionManager(region="us-east-1", endpoint_url="http://127.0.0.1:8080")
        result = await manager.exec("mi-0123456789abcdef0", "uname -a")
        print(result.exit_code, result.stdout.decode())

    asyncio.run(main())
"""

from ssmx._ssmx import (
    AuthError,
    ExecResult,
    OutputStream,
    PortForward,
    ProtocolError,
    Session,
    SessionManager,
    SsmxError,
    TargetNotConnected,
    TimeoutError,
    __version__,
)

__all__ = [
    "AuthError",
    "ExecResult",
    "OutputStream",
    "PortForward",
    "ProtocolError",
    "Session",
    "SessionManager",
    "SsmxError",
    "TargetNotConnected",
    "TimeoutError",
    "__version__",
]
