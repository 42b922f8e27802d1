//! Access policies through unmodified aws-cli: users with different policies start sessions
//! and send commands on a tagged node, and are refused with AWS's AccessDeniedException.

mod common;

use std::process::{Output, Stdio};

use common::Stack;

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

    // SendCommand to both nodes is refused as a whole: nothing is queued anywhere.
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
