"""The README's example, run as written against the test stack."""

import os
import subprocess
import sys
from pathlib import Path

from helpers import ACCESS_KEY_ID, DEADLINE, REGION, SECRET_ACCESS_KEY

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.py"


def test_quickstart_example(stack, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_ENDPOINT_URL=stack.url,
        AWS_CONFIG_FILE=str(tmp_path / "no-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
        SSMX_TARGET=stack.instance_id,
    )
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)], env=env, capture_output=True, timeout=DEADLINE
    )
    assert run.returncode == 0, run.stderr.decode()
    out = run.stdout.decode()
    assert out.startswith("0 Linux\n"), out
    assert "hello from " + os.uname().nodename in out, out
