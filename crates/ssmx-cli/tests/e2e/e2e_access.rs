//! Access policies through unmodified aws-cli: users with different policies start sessions
//! and send commands on a tagged node, and are refused with AWS's AccessDeniedException.

use std::process::{Output, Stdio};

use crate::common::{wait_for, Stack};

/// `tester` (the stack's own credential) administers; `dev` may start sessions and send
/// commands on nodes tagged env=dev only; `auditor` may only look.
const USERS: &str = r#"
[[credentials]]
access_key_id = "AKIASSMXE2EDEVUSER01"
secret_access_key = "dev-secret"
user = "dev"

[[credentials]]
access_key_id = "AKIASSMXE2EAUDITOR01"
secret_access_key = "auditor-secret"
user = "auditor"

[[users]]
name = "tester"
policies = ["AdministratorAccess"]

[[users]]
name = "dev"
groups = ["developers"]

[[users]]
name = "auditor"
policies = ["read-only"]

[[groups]]
name = "developers"
policies = ["dev-nodes"]

[[policies]]
name = "dev-nodes"
document = '''
{"Version": "2012-10-17", "Statement": [
  {"Sid": "DevNodes", "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:SendCommand"],
   "Resource": "arn:aws:ssm:*:*:managed-instance/*",
   "Condition": {"StringEquals": {"ssm:resourceTag/env": "dev"}}},
  {"Sid": "Documents", "Effect": "Allow", "Action": ["ssm:StartSession", "ssm:SendCommand"],
   "Resource": ["arn:aws:ssm:*::document/AWS-StartNonInteractiveCommand",
                "arn:aws:ssm:*::document/AWS-RunShellScript"]},
  {"Effect": "Allow", "Action": ["ssm:GetCommandInvocation", "ssm:ListCommandInvocations"],
   "Resource": "*"}]}
'''

[[policies]]
name = "read-only"
document = '''
{"Statement": {"Effect": "Allow", "Action": ["ssm:Describe*", "ssm:List*", "ssm:Get*"],
               "Resource": "*"}}
'''
"#;

fn as_user(stack: &Stack, key: &str, secret: &str, args: &[&str]) -> Output {
    let mut cmd = stack.aws();
    cmd.env("AWS_ACCESS_KEY_ID", key)
        .env("AWS_SECRET_ACCESS_KEY", secret)
        .args(args)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn command_session_args(instance: &str) -> Vec<String> {
    let parameters = serde_json::json!({ "command": ["echo policy-allowed"] });
    vec![
        "ssm".into(),
        "start-session".into(),
        "--target".into(),
        instance.into(),
        "--document-name".into(),
        "AWS-StartNonInteractiveCommand".into(),
        "--parameters".into(),
        parameters.to_string(),
    ]
}

#[test]
fn sessions_and_commands_follow_the_users_policies() {
    let mut stack = Stack::start_with(&[], USERS);
    let dev_node = stack.instance_id.clone();
    let other_node = stack.add_agent();
    stack.aws_json(&[
        "ssm",
        "add-tags-to-resource",
        "--resource-type",
        "ManagedInstance",
        "--resource-id",
        &dev_node,
        "--tags",
        "Key=env,Value=dev",
    ]);
    let dev = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        as_user(&stack, "AKIASSMXE2EDEVUSER01", "dev-secret", &args)
    };

    // Allowed by tag and document.
    let out = dev(&command_session_args(&dev_node));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("policy-allowed"),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stack.logs()
    );
    // The untagged node is refused, with AWS's message.
    let out = dev(&command_session_args(&other_node));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("AccessDeniedException"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "User: arn:aws:iam::000000000000:user/dev is not authorized to perform: \
             ssm:StartSession on resource: arn:aws:ssm:us-east-1:000000000000:managed-instance/{other_node} \
             because no identity-based policy allows the ssm:StartSession action"
        )),
        "{stderr}"
    );
    // A document the policy does not name is refused.
    let out = dev(&[
        "ssm".into(),
        "start-session".into(),
        "--target".into(),
        dev_node.clone(),
        "--document-name".into(),
        "AWS-StartPortForwardingSession".into(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SendCommand to a tag group where only one node is allowed is refused as a whole, as is
    // one naming both nodes: nothing is queued anywhere.
    for node in [&dev_node, &other_node] {
        stack.aws_json(&[
            "ssm",
            "add-tags-to-resource",
            "--resource-type",
            "ManagedInstance",
            "--resource-id",
            node,
            "--tags",
            "Key=role,Value=web",
        ]);
    }
    let out = dev(&[
        "ssm".into(),
        "send-command".into(),
        "--document-name".into(),
        "AWS-RunShellScript".into(),
        "--targets".into(),
        "Key=tag:role,Values=web".into(),
        "--parameters".into(),
        "commands=echo hi".into(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("AccessDeniedException") && stderr.contains(&other_node),
        "{stderr}"
    );
    let out = dev(&[
        "ssm".into(),
        "send-command".into(),
        "--document-name".into(),
        "AWS-RunShellScript".into(),
        "--instance-ids".into(),
        dev_node.clone(),
        other_node.clone(),
        "--parameters".into(),
        "commands=echo hi".into(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = stack.aws_json(&["ssm", "list-commands"]);
    assert_eq!(
        listed["Commands"].as_array().map(Vec::len),
        Some(0),
        "{listed}"
    );

    // The auditor may look but not act.
    let out = as_user(
        &stack,
        "AKIASSMXE2EAUDITOR01",
        "auditor-secret",
        &["ssm", "describe-instance-information"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = command_session_args(&dev_node);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = as_user(&stack, "AKIASSMXE2EAUDITOR01", "auditor-secret", &args);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("AccessDeniedException"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sessions_run_as_the_users_ssm_session_run_as_tag() {
    let run_as_doc = serde_json::json!({
        "schemaVersion": "1.0", "sessionType": "InteractiveCommands",
        "inputs": {"runAsEnabled": true, "runAsDefaultUser": "root"},
        "properties": {"linux": {"commands": "echo \"user=$(id -un)\""}}
    });
    let users = r#"
[[credentials]]
access_key_id = "AKIASSMXE2ERUNASUSR1"
secret_access_key = "runner-secret"
user = "runner"

[[users]]
name = "tester"
policies = ["AdministratorAccess"]

[[users]]
name = "runner"
policies = ["AdministratorAccess"]
tags = { SSMSessionRunAs = "nobody" }
"#;
    let stack = Stack::start_with(&[("Test-RunAs", run_as_doc)], users);
    if !nix::unistd::geteuid().is_root() {
        // Switching users needs a root agent.
        return;
    }
    let args = [
        "ssm",
        "start-session",
        "--target",
        &stack.instance_id,
        "--document-name",
        "Test-RunAs",
    ];
    let runner = as_user(&stack, "AKIASSMXE2ERUNASUSR1", "runner-secret", &args);
    let stdout = String::from_utf8_lossy(&runner.stdout);
    assert!(stdout.contains("user=nobody"), "{stdout}\n{}", stack.logs());
    // The administrator has no tag: the document's default applies.
    let tester = stack
        .aws()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&tester.stdout);
    assert!(stdout.contains("user=root"), "{stdout}\n{}", stack.logs());
}

/// `alice` operates dev nodes and may read command output and use KMS data keys; `bob` may
/// only look until the reload gives him dev nodes too (and takes alice's group away).
const BOTO3_USERS: &str = r#"
[[credentials]]
access_key_id = "AKIASSMXE2EALICE0001"
secret_access_key = "alice-secret"
user = "alice"

[[credentials]]
access_key_id = "AKIASSMXE2EBOB000001"
secret_access_key = "bob-secret"
user = "bob"

[[users]]
name = "tester"
policies = ["AdministratorAccess"]

[[users]]
name = "alice"
groups = ["operators"]

[[users]]
name = "bob"
policies = ["observer"]

[[groups]]
name = "operators"
policies = ["dev-sessions", "output-and-keys"]

[[policies]]
name = "dev-sessions"
document = '''
{"Statement": [
  {"Effect": "Allow", "Action": "ssm:StartSession",
   "Resource": "arn:aws:ssm:*:*:managed-instance/*",
   "Condition": {"StringEquals": {"ssm:resourceTag/env": "dev"}}},
  {"Effect": "Allow", "Action": "ssm:StartSession",
   "Resource": "arn:aws:ssm:*::document/AWS-StartPortForwardingSession"}]}
'''

[[policies]]
name = "output-and-keys"
document = '''
{"Statement": [
  {"Effect": "Allow", "Action": ["ssm:GetCommandInvocation", "kms:GenerateDataKey", "kms:Decrypt"],
   "Resource": "*"}]}
'''

[[policies]]
name = "observer"
document = '''
{"Statement": {"Effect": "Allow", "Action": "ssm:Describe*", "Resource": "*"}}
'''
"#;

/// What the boto3 scripts share: clients per user, an AccessDenied expectation, and SigV4-signed
/// raw requests (a WebSocket upgrade, a GET of a command's output).
const BOTO3_PRELUDE: &str = r#"
import http.client, json, sys, time, urllib.parse
import boto3, botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

url, region, instance = sys.argv[1:4]
KEYS = {"alice": ("AKIASSMXE2EALICE0001", "alice-secret"),
        "bob": ("AKIASSMXE2EBOB000001", "bob-secret")}

def client(service, user):
    key, secret = KEYS[user]
    return boto3.client(service, endpoint_url=url, region_name=region,
                        aws_access_key_id=key, aws_secret_access_key=secret)

def denied(call, **kwargs):
    try:
        call(**kwargs)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "AccessDeniedException", e.response
        return e.response["Error"]["Message"]
    raise AssertionError(f"{call.__name__} {kwargs} was allowed")

def signed(user, service, target_url, headers=None):
    """Sends a GET signed by `user` (SigV4 over host and date); its status and body."""
    http_url = target_url.replace("wss://", "https://").replace("ws://", "http://")
    request = AWSRequest(method="GET", url=http_url)
    SigV4Auth(Credentials(*KEYS[user]), service, region).add_auth(request)
    parts = urllib.parse.urlsplit(http_url)
    conn = http.client.HTTPConnection(parts.netloc, timeout=30)
    path = parts.path + ("?" + parts.query if parts.query else "")
    conn.request("GET", path, headers={**dict(request.headers.items()), **(headers or {})})
    response = conn.getresponse()
    body = b"" if response.status == 101 else response.read()
    conn.close()
    return response.status, body

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade",
           "Sec-WebSocket-Key": "c3NteC1hY2Nlc3MtdGVzdA==", "Sec-WebSocket-Version": "13"}
PORT_FORWARDING = {"Target": instance, "DocumentName": "AWS-StartPortForwardingSession",
                   "Parameters": {"portNumber": ["22"], "localPortNumber": ["0"]}}
"#;

/// Before the reload: sessions by tag, signed upgrades, terminating another user's session,
/// KMS and command output per user.
const BOTO3_BEFORE_RELOAD: &str = r#"
other, output_url = sys.argv[4:6]
alice, bob = client("ssm", "alice"), client("ssm", "bob")
admin = boto3.client("ssm", endpoint_url=url, region_name=region)

# By tag: alice on the dev node, not on the other one; bob on neither.
session = alice.start_session(**PORT_FORWARDING)
message = denied(alice.start_session, **{**PORT_FORWARDING, "Target": other})
assert f"ssm:StartSession on resource: arn:aws:ssm:{region}:000000000000:managed-instance/{other}" in message, message
denied(bob.start_session, **PORT_FORWARDING)

# A signed upgrade: alice's own is let through, bob's (with alice's token in hand) is refused.
status, _ = signed("alice", "ssmmessages", session["StreamUrl"], UPGRADE)
assert status == 101, status
status, body = signed("bob", "ssmmessages", session["StreamUrl"], UPGRADE)
assert status == 403 and b"AccessDeniedException" in body, (status, body)

# Terminating: bob may not end alice's session; alice ends her own; the administrator anyone's.
denied(bob.terminate_session, SessionId=session["SessionId"])
alice.terminate_session(SessionId=session["SessionId"])
# A request unlike the first: SigV4 signs to the second, so the same request again within it
# would carry the same signature, which the gateway accepts once.
second = alice.start_session(**PORT_FORWARDING, Reason="a second session")
admin.terminate_session(SessionId=second["SessionId"])
assert admin.describe_sessions(State="History")["Sessions"], "terminated sessions are in the history"

# KMS: alice may make data keys and decrypt them; bob may not; ListKeys is allowed to nobody.
kms = client("kms", "alice")
key = kms.generate_data_key(KeyId="alias/ssmx-access-test", NumberOfBytes=32,
                            EncryptionContext={"purpose": "test"})
kms.decrypt(CiphertextBlob=key["CiphertextBlob"], EncryptionContext={"purpose": "test"})
message = denied(client("kms", "bob").generate_data_key, KeyId="alias/ssmx-access-test",
                 NumberOfBytes=32)
assert "kms:GenerateDataKey" in message, message
denied(kms.list_keys)

# Command output: read by alice, refused to bob.
status, body = signed("alice", "ssm", output_url)
assert status == 200 and b"output-for-alice" in body, (status, body)
status, body = signed("bob", "ssm", output_url)
assert status == 400 and b"AccessDeniedException" in body, (status, body)
print("boto3-ok")
"#;

/// After the reload: bob has dev sessions by tag and the other node by its ARN, alice has lost
/// hers.
const BOTO3_AFTER_RELOAD: &str = r#"
other = sys.argv[4]
alice, bob = client("ssm", "alice"), client("ssm", "bob")
for target in (instance, other):
    session = bob.start_session(**{**PORT_FORWARDING, "Target": target})
    bob.terminate_session(SessionId=session["SessionId"])
denied(alice.start_session, **PORT_FORWARDING)
print("boto3-ok")
"#;

#[test]
fn boto3_users_sessions_keys_output_and_a_policy_reload() {
    let mut stack = Stack::start_with(&[], BOTO3_USERS);
    let other_node = stack.add_agent();
    stack.aws_json(&[
        "ssm",
        "add-tags-to-resource",
        "--resource-type",
        "ManagedInstance",
        "--resource-id",
        &stack.instance_id,
        "--tags",
        "Key=env,Value=dev",
    ]);
    let sent = stack.aws_json(&[
        "ssm",
        "send-command",
        "--document-name",
        "AWS-RunShellScript",
        "--instance-ids",
        &stack.instance_id,
        "--parameters",
        "commands=echo output-for-alice",
    ]);
    let command_id = sent["Command"]["CommandId"].as_str().unwrap().to_owned();
    let invocation = wait_for(
        || {
            let out = stack
                .aws()
                .args(["ssm", "get-command-invocation", "--output", "json"])
                .args(["--command-id", &command_id, "--instance-id"])
                .arg(&stack.instance_id)
                .output()
                .unwrap();
            let value: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (value["Status"] == "Success").then_some(value)
        },
        "the command to succeed",
    );
    let output_url = invocation["StandardOutputUrl"].as_str().unwrap();
    assert!(!output_url.is_empty(), "{invocation}");

    let script = |body: &str| format!("{BOTO3_PRELUDE}{body}");
    stack.run_boto3_with(
        &script(BOTO3_BEFORE_RELOAD),
        &[other_node.as_str(), output_url],
    );

    let config = stack.path("gateway.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    // Bob gets the dev nodes by tag and the other node by its ARN; alice loses her group.
    let moved = text
        .replace("groups = [\"operators\"]", "groups = []")
        .replace(
            "policies = [\"observer\"]",
            "policies = [\"dev-sessions\", \"other-node\"]",
        )
        + &format!(
            r#"
[[policies]]
name = "other-node"
document = '{{"Statement": {{"Effect": "Allow", "Action": "ssm:StartSession", "Resource": "arn:aws:ssm:us-east-1:000000000000:managed-instance/{other_node}"}}}}'
"#
        );
    assert_ne!(moved, text);
    std::fs::write(&config, moved).unwrap();
    stack.reload_gateway();
    stack.run_boto3_with(&script(BOTO3_AFTER_RELOAD), &[other_node.as_str()]);
}
