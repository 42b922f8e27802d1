"""Constants and helpers shared by the tests and their fixtures."""

import asyncio
import time

import pytest

ACCESS_KEY_ID = "AKIASSMXPYTEST000001"
SECRET_ACCESS_KEY = "ssmx-python-secret-key-0123456789abcdefAB"
REGION = "us-east-1"
# Profiles written to the test's AWS config files.
PROFILE = "ssmx-test"
BAD_PROFILE = "ssmx-bad-credentials"
# A custom document the test stack serves: a command whose session is KMS-encrypted.
ENCRYPTED_EXEC_DOCUMENT = "Encrypted-Exec"
# Upper bound for any one step of bringing the stack up (a hang guard, not a timing goal).
STEP_DEADLINE = 60.0
# Upper bound for one operation inside a test (a hang guard, not a timing goal).
DEADLINE = 60.0


def wait_for(what, probe, process=None, deadline=STEP_DEADLINE, interval=0.1):
    """Polls `probe` until it returns something truthy; fails after `deadline` seconds or
    when `process` exits."""
    end = time.monotonic() + deadline
    while True:
        value = probe()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {deadline} s")
        time.sleep(interval)


async def read_until(session, needle: bytes, deadline: float = DEADLINE) -> bytes:
    """Reads the session's output until `needle` appears; returns everything read."""
    seen = b""

    async def scan():
        nonlocal seen
        async for chunk in session.output():
            seen += chunk
            if needle in seen:
                return seen
        raise AssertionError(f"the session ended before {needle!r} appeared; output: {seen!r}")

    try:
        return await asyncio.wait_for(scan(), deadline)
    except asyncio.TimeoutError:
        raise AssertionError(f"{needle!r} did not appear; output: {seen!r}") from None
