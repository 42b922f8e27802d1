import asyncio
import os

import ssmx


async def main():
    # Region, credentials and endpoint come from the AWS environment
    # (AWS_REGION, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL=http://127.0.0.1:8080 for a gateway).
    manager = ssmx.SessionManager()
    target = os.environ["SSMX_TARGET"]  # e.g. mi-0123456789abcdef0

    result = await manager.exec(target, "uname -s")
    print(result.exit_code, result.stdout.decode().strip())

    async with await manager.start_session(target) as shell:
        await shell.send(b"echo hello from $(hostname); exit\r")
        async for chunk in shell.output():
            print(chunk.decode(errors="replace"), end="")


asyncio.run(main())
