"""Interactive shell sessions: input, output, resize, exit."""

import asyncio

import pytest

import ssmx
from helpers import DEADLINE, read_until


async def test_shell_runs_commands_resizes_and_exits(manager, stack):
    session = await manager.start_session(stack.instance_id)
    async with session:
        assert isinstance(session, ssmx.Session)
        assert session.session_id in stack.active_sessions()
        assert session.target == stack.instance_id
        # The shell evaluates the arithmetic: only real execution prints "ssmx-42".
        await session.send(b"echo ssmx-$((6 * 7))\r")
        await read_until(session, b"ssmx-42")

        await session.resize(37, 141)
        await session.send(b"stty size\r")
        await read_until(session, b"37 141")

        await session.send(bytearray(b"exit\r"))
        code = await asyncio.wait_for(session.wait(), DEADLINE)
        assert code is None or isinstance(code, int)
        # The end is remembered: waiting again answers at once, the iterator is exhausted.
        assert await session.wait() == code
        assert [chunk async for chunk in session.output()] == []
    stack.wait_until_ended({session.session_id})


async def test_leaving_async_with_ends_the_session(manager, stack):
    async with await manager.start_session(stack.instance_id) as session:
        await session.send(b"echo ready-$((1 + 1))\r")
        await read_until(session, b"ready-2")
        session_id = session.session_id
    stack.wait_until_ended({session_id})
    # The session is over locally too.
    assert await asyncio.wait_for(session.wait(), DEADLINE) is None


async def test_output_and_wait_from_different_tasks(manager, stack):
    async with await manager.start_session(stack.instance_id) as session:
        seen = bytearray()

        async def collect(stream):
            async for chunk in stream:
                seen.extend(chunk)

        # wait() leaves the output to an open iterator instead of discarding it.
        reader = asyncio.create_task(collect(session.output()))
        await session.send(b"echo collected-$((2 * 21)); exit\r")
        await asyncio.wait_for(session.wait(), DEADLINE)
        await asyncio.wait_for(reader, DEADLINE)
        assert b"collected-42" in seen


async def test_terminate_ends_the_session(manager, stack):
    session = await manager.start_session(stack.instance_id)
    await session.terminate()
    await asyncio.wait_for(session.wait(), DEADLINE)
    stack.wait_until_ended({session.session_id})
    with pytest.raises(ssmx.SsmxError):
        await session.send(b"too late\r")


async def test_send_rejects_text(manager, stack):
    async with await manager.start_session(stack.instance_id) as session:
        with pytest.raises(TypeError):
            await session.send("not bytes")
