"""The test stack: a real ssmx gateway and a real ssmx agent as child processes on 127.0.0.1,
started the way an operator would (see the gateway/agent command lines of the project), and
AWS shared-config files for the clients under test.

The binary is $SSMX_BIN, else <repo>/target/debug/ssmx (build it with `cargo build --bin ssmx`).
"""

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import boto3
import botocore.config
import pytest

import ssmx
from helpers import (
    ACCESS_KEY_ID,
    ENCRYPTED_EXEC_DOCUMENT,
    BAD_PROFILE,
    DEADLINE,
    PROFILE,
    REGION,
    SECRET_ACCESS_KEY,
    STEP_DEADLINE,
    wait_for,
)

REPO = Path(__file__).resolve().parents[4]
# Lines of each log shown when a test fails.
LOG_TAIL_LINES = 80
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Seconds between polls of the service. SigV4 timestamps have one-second resolution and the
# gateway refuses a repeated signature as a replay, so identical queries are spaced out.
SERVICE_POLL_INTERVAL = 1.0


def ssmx_binary() -> Path:
    path = Path(os.environ.get("SSMX_BIN") or REPO / "target" / "debug" / "ssmx")
    if not path.is_file():
        pytest.fail(f"ssmx binary not found at {path}: run `cargo build --bin ssmx` or set SSMX_BIN")
    return path


def stop(process):
    """SIGTERM, then SIGKILL after 5 s; reaps the process."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Stack:
    """A running gateway and registered agent."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.binary = ssmx_binary()
        self.processes = []
        self.url = ""
        self.instance_id = ""
        self._ssm = None

    def run(self, *args) -> dict:
        out = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            timeout=STEP_DEADLINE,
            env=self.child_env(),
        )
        if out.returncode != 0:
            pytest.fail(f"ssmx {' '.join(args)} failed ({out.returncode}): {out.stderr.decode()}")
        return json.loads(out.stdout)

    def spawn(self, log_name, *args):
        log = open(self.dir / log_name, "wb")
        env = self.child_env()
        env["SSMX_LOG"] = "info"
        process = subprocess.Popen(
            [str(self.binary), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=env,
        )
        log.close()
        self.processes.append(process)
        return process

    def child_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        return env

    def start(self):
        documents = self.dir / "documents"
        documents.mkdir()
        (documents / f"{ENCRYPTED_EXEC_DOCUMENT}.json").write_text(json.dumps({
            "schemaVersion": "1.0",
            "description": "A command, encrypted end to end with a KMS data key",
            "sessionType": "NonInteractiveCommands",
            "inputs": {"kmsKeyId": "alias/ssmx-pytest"},
            "parameters": {"command": {"type": "String"}},
            "properties": {"linux": {"commands": "{{command}}", "runAsElevated": False,
                                     "separateOutputStream": True}},
        }))
        config = self.dir / "gateway.toml"
        config.write_text(
            f'listen = "127.0.0.1:0"\n'
            f'db = "{self.dir / "gateway.db"}"\n'
            f'region = "{REGION}"\n'
            f'recordings_dir = "{self.dir / "recordings"}"\n'
            f'documents_dir = "{documents}"\n'
            f"\n[[credentials]]\n"
            f'access_key_id = "{ACCESS_KEY_ID}"\n'
            f'secret_access_key = "{SECRET_ACCESS_KEY}"\n'
            f'user = "pytest"\n'
        )
        ready = self.dir / "gateway.url"
        gateway = self.spawn(
            "gateway.log", "gateway", "run", "--config", str(config), "--ready-file", str(ready)
        )
        self.url = wait_for(
            "gateway ready file",
            lambda: ready.exists() and ready.read_text().strip(),
            gateway,
        )
        activation = self.run("gateway", "activation", "create", "--config", str(config))
        state_dir = self.dir / "agent"
        registered = self.run(
            "agent", "register",
            "--gateway", self.url,
            "--activation-id", activation["ActivationId"],
            "--activation-code", activation["ActivationCode"],
            "--state-dir", str(state_dir),
        )
        self.instance_id = registered["InstanceId"]
        agent = self.spawn(
            "agent.log", "agent", "run",
            "--state-dir", str(state_dir),
            "--log-dir", str(self.dir / "sessions"),
            "--shell", "/bin/sh",
        )
        wait_for(
            "agent connected",
            lambda: self.connected(),
            agent,
            interval=SERVICE_POLL_INTERVAL,
        )

    def ssm(self):
        """A boto3 SSM client for the gateway (an independent view of the service's state)."""
        if self._ssm is None:
            self._ssm = boto3.client(
                "ssm",
                endpoint_url=self.url,
                region_name=REGION,
                aws_access_key_id=ACCESS_KEY_ID,
                aws_secret_access_key=SECRET_ACCESS_KEY,
                config=botocore.config.Config(retries={"mode": "standard", "max_attempts": 10}),
            )
        return self._ssm

    def connected(self):
        """True while the agent's control channel is open: it can take sessions now."""
        status = self.ssm().get_connection_status(Target=self.instance_id)
        return status["Status"] == "connected"

    def active_sessions(self):
        """Ids of the sessions the service reports Active."""
        pages = self.ssm().get_paginator("describe_sessions").paginate(State="Active")
        return {s["SessionId"] for page in pages for s in page["Sessions"]}

    def wait_until_ended(self, session_ids):
        """Waits until the service no longer lists any of `session_ids` as Active."""
        wait_for(
            f"sessions {sorted(session_ids)} to end",
            lambda: not (self.active_sessions() & set(session_ids)),
            deadline=DEADLINE,
            interval=SERVICE_POLL_INTERVAL,
        )

    def stop(self):
        for process in reversed(self.processes):
            stop(process)

    def log_tails(self):
        tails = []
        for name in ("gateway.log", "agent.log"):
            path = self.dir / name
            if path.exists():
                text = ANSI_ESCAPE.sub("", path.read_text(errors="replace"))
                lines = text.splitlines()[-LOG_TAIL_LINES:]
                tails.append((name, "\n".join(lines)))
        return tails


_stack = None


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    global _stack
    started = Stack(tmp_path_factory.mktemp("stack"))
    _stack = started
    try:
        started.start()
        yield started
    finally:
        started.stop()
        _stack = None


@pytest.fixture(scope="session", autouse=True)
def aws_config(tmp_path_factory):
    """Shared config files with a working and a wrong profile; nothing from the developer's
    own AWS environment leaks into the tests."""
    directory = tmp_path_factory.mktemp("aws")
    (directory / "credentials").write_text(
        f"[{PROFILE}]\n"
        f"aws_access_key_id = {ACCESS_KEY_ID}\n"
        f"aws_secret_access_key = {SECRET_ACCESS_KEY}\n"
        f"\n[{BAD_PROFILE}]\n"
        f"aws_access_key_id = AKIASSMXPYTESTWRONG1\n"
        f"aws_secret_access_key = not-the-secret-the-gateway-knows\n"
    )
    (directory / "config").write_text(
        f"[profile {PROFILE}]\nregion = {REGION}\n\n[profile {BAD_PROFILE}]\nregion = {REGION}\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("AWS_"):
                patch.delenv(name)
        patch.setenv("AWS_CONFIG_FILE", str(directory / "config"))
        patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(directory / "credentials"))
        patch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        yield directory


@pytest.fixture(scope="session")
def manager(stack):
    """The client under test: profile (credentials and region) plus the gateway's endpoint."""
    return ssmx.SessionManager(profile=PROFILE, endpoint_url=stack.url)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and _stack is not None:
        for name, tail in _stack.log_tails():
            report.sections.append((f"last lines of {name}", tail))
    return report
