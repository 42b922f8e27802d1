"""Commands: exit codes, separate output streams, many at once."""

import asyncio

from helpers import DEADLINE, ENCRYPTED_EXEC_DOCUMENT


async def test_exit_code_and_separate_streams(manager, stack):
    result = await asyncio.wait_for(
        manager.exec(stack.instance_id, "sh -c 'echo to-out; echo to-err >&2; exit 3'"),
        DEADLINE,
    )
    assert result.exit_code == 3
    assert result.stdout == b"to-out\n"
    assert result.stderr == b"to-err\n"
    assert "exit_code=3" in repr(result)


async def test_success_and_failure_codes(manager, stack):
    ok, failed = await asyncio.gather(
        manager.exec(stack.instance_id, "true"),
        manager.exec(stack.instance_id, "sh -c 'exit 42'"),
    )
    assert (ok.exit_code, ok.stdout, ok.stderr) == (0, b"", b"")
    assert failed.exit_code == 42


async def test_large_output_arrives_whole(manager, stack):
    size = 1_000_000
    result = await asyncio.wait_for(
        manager.exec(stack.instance_id, f"head -c {size} /dev/zero"), DEADLINE
    )
    assert result.exit_code == 0
    assert result.stdout == bytes(size)


async def test_twenty_concurrent_commands(manager, stack):
    commands = [
        manager.exec(stack.instance_id, f"sh -c 'echo job-{i}; echo err-{i} >&2; exit {i}'")
        for i in range(20)
    ]
    results = await asyncio.wait_for(asyncio.gather(*commands), DEADLINE)
    for i, result in enumerate(results):
        assert result.exit_code == i
        assert result.stdout == f"job-{i}\n".encode()
        assert result.stderr == f"err-{i}\n".encode()


async def test_encrypted_session_when_the_document_asks(manager, stack):
    command = {"command": "sh -c 'echo sealed-$((40+2)); exit 5'"}
    async with await manager.start_session(
        stack.instance_id, ENCRYPTED_EXEC_DOCUMENT, command
    ) as session:
        assert session.encrypted
        output = b"".join([chunk async for chunk in session.output()])
        assert output == b"sealed-42\n"
        assert await asyncio.wait_for(session.wait(), DEADLINE) == 5
    async with await manager.start_session(
        stack.instance_id, "AWS-StartNonInteractiveCommand", {"command": "true"}
    ) as plain:
        assert not plain.encrypted
        assert await asyncio.wait_for(plain.wait(), DEADLINE) == 0
