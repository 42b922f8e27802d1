//! Run Command end to end: unmodified aws-cli and boto3, and `ssmx run` / `ssmx commands`,
//! against a real gateway and real agents.

use std::io::Read;
use std::process::Output;

use crate::common::Stack;
use serde_json::Value;

/// `aws ssm send-command` of AWS-RunShellScript with `commands`; the command id.
fn aws_send(stack: &Stack, commands: &str) -> String {
    aws_send_with(stack, &["--parameters", &format!("commands={commands}")])
}

/// `aws ssm send-command` of AWS-RunShellScript to the stack's instance with `args`; the
/// command id.
fn aws_send_with(stack: &Stack, args: &[&str]) -> String {
    let mut all = vec![
        "ssm",
        "send-command",
        "--document-name",
        "AWS-RunShellScript",
        "--instance-ids",
        &stack.instance_id,
    ];
    all.extend_from_slice(args);
    let sent = stack.aws_json(&all);
    let id = sent["Command"]["CommandId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{sent}");
    id
}

/// `aws ssm wait command-executed` for the stack's instance.
fn aws_wait(stack: &Stack, command_id: &str) -> Output {
    stack
        .aws()
        .args([
            "ssm",
            "wait",
            "command-executed",
            "--command-id",
            command_id,
        ])
        .args(["--instance-id", &stack.instance_id])
        .output()
        .unwrap()
}

fn get_invocation(stack: &Stack, command_id: &str) -> Value {
    stack.aws_json(&[
        "ssm",
        "get-command-invocation",
        "--command-id",
        command_id,
        "--instance-id",
        &stack.instance_id,
    ])
}

#[test]
fn aws_cli_sends_a_command_and_reads_its_result() {
    let stack = Stack::start();
    let command_id = aws_send(&stack, "echo hello-$((6*7))");
    let waited = aws_wait(&stack, &command_id);
    stack.assert_exit(&waited, 0);

    let invocation = get_invocation(&stack, &command_id);
    assert_eq!(invocation["Status"], "Success", "{invocation}");
    assert_eq!(invocation["StatusDetails"], "Success", "{invocation}");
    assert_eq!(invocation["ResponseCode"], 0, "{invocation}");
    assert_eq!(invocation["StandardOutputContent"], "hello-42\n");
    assert_eq!(invocation["StandardErrorContent"], "");
    assert_eq!(invocation["PluginName"], "aws:runShellScript");
    assert!(invocation["ExecutionElapsedTime"]
        .as_str()
        .is_some_and(|t| t.starts_with("PT") && t.ends_with('S')));

    let listed = stack.aws_json(&[
        "ssm",
        "list-command-invocations",
        "--command-id",
        &command_id,
        "--details",
    ]);
    let invocations = listed["CommandInvocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 1, "{listed}");
    let inv = &invocations[0];
    assert_eq!(inv["InstanceId"], stack.instance_id.as_str());
    assert_eq!(inv["Status"], "Success", "{inv}");
    let plugins = inv["CommandPlugins"].as_array().unwrap();
    assert_eq!(plugins.len(), 1, "{inv}");
    assert_eq!(plugins[0]["Name"], "aws:runShellScript");
    assert_eq!(plugins[0]["Status"], "Success");
    assert_eq!(plugins[0]["ResponseCode"], 0);
    assert_eq!(plugins[0]["Output"], "hello-42\n");

    let commands = stack.aws_json(&["ssm", "list-commands", "--command-id", &command_id]);
    let command = &commands["Commands"][0];
    assert_eq!(command["Status"], "Success", "{command}");
    assert_eq!(
        (
            &command["TargetCount"],
            &command["CompletedCount"],
            &command["ErrorCount"]
        ),
        (&Value::from(1), &Value::from(1), &Value::from(0)),
        "{command}"
    );
}

#[test]
fn aws_cli_sees_a_failing_command_fail() {
    let stack = Stack::start();
    let command_id = aws_send(&stack, "echo partial; echo broken >&2; exit 3");
    let waited = aws_wait(&stack, &command_id);
    // The waiter stops on Failed with an error of its own.
    assert_eq!(waited.status.code(), Some(255), "{waited:?}");
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains("Waiter CommandExecuted failed"),
        "{waited:?}"
    );

    let invocation = get_invocation(&stack, &command_id);
    assert_eq!(invocation["Status"], "Failed", "{invocation}");
    assert_eq!(invocation["StatusDetails"], "Failed", "{invocation}");
    assert_eq!(invocation["ResponseCode"], 3, "{invocation}");
    assert_eq!(invocation["StandardOutputContent"], "partial\n");
    assert!(
        invocation["StandardErrorContent"]
            .as_str()
            .unwrap()
            .starts_with("broken\n"),
        "{invocation}"
    );
    let commands = stack.aws_json(&["ssm", "list-commands", "--command-id", &command_id]);
    assert_eq!(commands["Commands"][0]["Status"], "Failed");
    assert_eq!(commands["Commands"][0]["ErrorCount"], 1);
}

#[test]
fn boto3_waits_for_a_command_and_pages_through_commands() {
    let stack = Stack::start();
    let script = r#"
import sys, boto3
ssm = boto3.client("ssm", endpoint_url=sys.argv[1], region_name=sys.argv[2])
instance = sys.argv[3]
ids = []
for i in range(3):
    sent = ssm.send_command(
        DocumentName="AWS-RunShellScript",
        InstanceIds=[instance],
        Parameters={"commands": ["echo boto3-%d" % i]},
    )
    ids.append(sent["Command"]["CommandId"])
waiter = ssm.get_waiter("command_executed")
for i, cid in enumerate(ids):
    waiter.wait(CommandId=cid, InstanceId=instance, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    out = ssm.get_command_invocation(CommandId=cid, InstanceId=instance)
    assert out["Status"] == "Success", out
    assert out["StandardOutputContent"] == "boto3-%d\n" % i, out
pages = list(ssm.get_paginator("list_commands").paginate(PaginationConfig={"PageSize": 2}))
assert len(pages) == 2, pages
listed = [c["CommandId"] for p in pages for c in p["Commands"]]
assert sorted(listed) == sorted(ids), (listed, ids)
assert all(c["Status"] == "Success" for p in pages for c in p["Commands"])
invocations = [
    i for p in ssm.get_paginator("list_command_invocations").paginate(
        Details=True, PaginationConfig={"PageSize": 1})
    for i in p["CommandInvocations"]
]
assert len(invocations) == 3, invocations
assert all(i["CommandPlugins"][0]["ResponseCode"] == 0 for i in invocations), invocations
print("boto3-ok")
"#;
    stack.run_boto3(script);
}

/// `ssmx ARGS` against the stack, to completion.
fn ssmx(stack: &Stack, args: &[&str]) -> Output {
    stack.ssmx().args(args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ssmx_run_prints_the_output_and_exits_with_the_result() {
    let stack = Stack::start();
    let id = stack.instance_id.as_str();
    let ok = ssmx(
        &stack,
        &["run", "--instance-ids", id, "--", "echo", "hello from run"],
    );
    stack.assert_exit(&ok, 0);
    assert_eq!(text(&ok.stdout), "hello from run\n");
    let progress = text(&ok.stderr);
    assert!(
        progress.contains(&format!("{id}: Success (exit 0)")),
        "{progress}"
    );
    assert!(progress.contains("1/1 done: Success 1"), "{progress}");

    let failed = ssmx(
        &stack,
        &[
            "run",
            "--instance-ids",
            id,
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ],
    );
    stack.assert_exit(&failed, 1);
    assert_eq!(text(&failed.stdout), "out\n");
    let stderr = text(&failed.stderr);
    assert!(stderr.contains("err\n"), "{stderr}");
    assert!(
        stderr.contains(&format!("{id}: Failed (exit 3)")),
        "{stderr}"
    );

    // Output beyond what GetCommandInvocation carries: the cut is said, with where the rest is.
    let long = ssmx(
        &stack,
        &["run", "--instance-ids", id, "--", "seq", "1", "10000"],
    );
    stack.assert_exit(&long, 0);
    let stdout = text(&long.stdout);
    assert_eq!(stdout.chars().count(), 24_000);
    assert!(stdout.starts_with("1\n2\n3\n"), "{stdout}");
    let stderr = text(&long.stderr);
    assert!(
        stderr.contains(&format!(
            "{id}: output cut at 24000 characters; all of it is at {}/",
            stack.url
        )),
        "{stderr}"
    );

    // The execution timeout ends the script; the node timed out.
    let timed_out = ssmx(
        &stack,
        &[
            "run",
            "--instance-ids",
            id,
            "--timeout",
            "1",
            "--",
            "sleep",
            "30",
        ],
    );
    stack.assert_exit(&timed_out, 1);
    let stderr = text(&timed_out.stderr);
    assert!(
        stderr.contains(&format!("{id}: TimedOut (ExecutionTimedOut) (exit 137)")),
        "{stderr}"
    );
}

#[test]
fn ssmx_run_json_reports_every_invocation() {
    let stack = Stack::start();
    let out = ssmx(
        &stack,
        &[
            "run",
            "--json",
            "--targets",
            &format!("Key=InstanceIds,Values={}", stack.instance_id),
            "--",
            "sh",
            "-c",
            "echo json-out; echo json-err >&2; exit 5",
        ],
    );
    stack.assert_exit(&out, 1);
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["CommandId"].as_str().unwrap().len(), 36, "{report}");
    assert_eq!(report["Status"], "Failed", "{report}");
    let invocations = report["Invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 1, "{report}");
    let inv = &invocations[0];
    assert_eq!(inv["InstanceId"], stack.instance_id.as_str());
    assert_eq!(
        (&inv["Status"], &inv["ResponseCode"]),
        (&Value::from("Failed"), &Value::from(5))
    );
    let plugin = &inv["Plugins"][0];
    assert_eq!(plugin["Name"], "aws:runShellScript");
    assert_eq!(plugin["StandardOutputContent"], "json-out\n");
    assert!(
        plugin["StandardErrorContent"]
            .as_str()
            .unwrap()
            .starts_with("json-err\n"),
        "{report}"
    );
    // The nodes' output is in the JSON only.
    assert!(
        !text(&out.stderr).contains("json-err"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn ssmx_run_refuses_bad_requests_with_status_2() {
    let stack = Stack::start();
    let unknown = ssmx(
        &stack,
        &[
            "run",
            "--instance-ids",
            "mi-00000000000000000",
            "--",
            "true",
        ],
    );
    stack.assert_exit(&unknown, 2);
    assert!(
        text(&unknown.stderr).contains("InvalidInstanceId"),
        "{}",
        text(&unknown.stderr)
    );
    let no_nodes = ssmx(&stack, &["run", "--", "true"]);
    stack.assert_exit(&no_nodes, 2);
    let bad_rate = ssmx(
        &stack,
        &[
            "run",
            "--instance-ids",
            &stack.instance_id,
            "--max-concurrency",
            "0",
            "--",
            "true",
        ],
    );
    stack.assert_exit(&bad_rate, 2);
    assert!(
        text(&bad_rate.stderr).contains("MaxConcurrency"),
        "{}",
        text(&bad_rate.stderr)
    );
    let bad_target = ssmx(
        &stack,
        &["run", "--targets", "InstanceIds=mi-1", "--", "true"],
    );
    stack.assert_exit(&bad_target, 2);
}

#[test]
fn ssmx_run_on_two_nodes_prefixes_their_output() {
    let mut stack = Stack::start();
    let first = stack.instance_id.clone();
    let second = stack.add_agent();
    let nodes = format!("Key=InstanceIds,Values={first},{second}");
    let out = ssmx(
        &stack,
        &[
            "run",
            "--targets",
            &nodes,
            "--",
            "sh",
            "-c",
            "echo on-$AWS_SSM_INSTANCE_ID",
        ],
    );
    stack.assert_exit(&out, 0);
    let stdout = text(&out.stdout);
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    let mut expected = vec![
        format!("{first}: on-{first}"),
        format!("{second}: on-{second}"),
    ];
    expected.sort_unstable();
    assert_eq!(lines, expected, "{stdout}");
    assert!(
        text(&out.stderr).contains("2/2 done: Success 2"),
        "{}",
        text(&out.stderr)
    );

    // One node fails: with MaxErrors 1 the other still runs, and the exit status says so.
    let out = ssmx(
        &stack,
        &[
            "run",
            "--targets",
            &nodes,
            "--max-errors",
            "1",
            "--json",
            "--",
            "sh",
            "-c",
            &format!("test $AWS_SSM_INSTANCE_ID = {second} || exit 4"),
        ],
    );
    stack.assert_exit(&out, 1);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_node: std::collections::BTreeMap<&str, (&str, i64)> = report["Invocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["InstanceId"].as_str().unwrap(),
                (
                    i["Status"].as_str().unwrap(),
                    i["ResponseCode"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(by_node[first.as_str()], ("Failed", 4), "{report}");
    assert_eq!(by_node[second.as_str()], ("Success", 0), "{report}");
}

#[test]
fn ssmx_commands_list_show_and_cancel() {
    let stack = Stack::start();
    let id = stack.instance_id.as_str();
    let done = ssmx(
        &stack,
        &[
            "run",
            "--instance-ids",
            id,
            "--comment",
            "listed",
            "--",
            "echo",
            "shown",
        ],
    );
    stack.assert_exit(&done, 0);
    let started = stack.path("started");
    let script = format!("touch {}; sleep 60", started.display());
    let sdk = stack.sdk();
    let running = crate::common::runtime()
        .block_on(
            sdk.send_command()
                .document_name("AWS-RunShellScript")
                .instance_ids(id)
                .parameters("commands", vec![script])
                .send(),
        )
        .unwrap();
    let running = running.command().unwrap().command_id().unwrap().to_owned();

    let listed = ssmx(&stack, &["commands", "list"]);
    stack.assert_exit(&listed, 0);
    let listed = text(&listed.stdout);
    let rows: Vec<&str> = listed.lines().collect();
    assert!(rows[0].starts_with("COMMAND ID  "), "{listed}");
    assert_eq!(rows.len(), 3, "{listed}");
    // Newest first, in aligned columns.
    assert!(rows[1].starts_with(&running), "{listed}");
    let status_column = rows[0].find("STATUS").unwrap();
    assert_eq!(
        rows[2][status_column..].split_whitespace().next(),
        Some("Success"),
        "{listed}"
    );
    assert!(rows[2].ends_with("  listed"), "{listed}");

    let finished_id = rows[2].split_whitespace().next().unwrap();
    let shown = ssmx(&stack, &["commands", "show", finished_id]);
    stack.assert_exit(&shown, 0);
    assert_eq!(text(&shown.stdout), "shown\n");
    assert!(
        text(&shown.stderr).contains(&format!("{id}: Success (exit 0)")),
        "{}",
        text(&shown.stderr)
    );

    // Cancel the running one once its script runs; it ends Cancelled.
    crate::common::wait_for(|| started.exists().then_some(()), "the script to start");
    let show_json = |command_id: &str| -> Value {
        let out = ssmx(&stack, &["commands", "show", "--json", command_id]);
        serde_json::from_slice(&out.stdout).expect("show --json")
    };
    crate::common::wait_for(
        || (show_json(&running)["Invocations"][0]["Status"] == "InProgress").then_some(()),
        "the invocation to be InProgress",
    );
    let cancelled = ssmx(&stack, &["commands", "cancel", &running]);
    stack.assert_exit(&cancelled, 0);
    let report = crate::common::wait_for(
        || Some(show_json(&running)).filter(|r| r["Status"] == "Cancelled"),
        "the command to be cancelled",
    );
    assert_eq!(report["Invocations"][0]["Status"], "Cancelled", "{report}");
    assert_eq!(report["Invocations"][0]["ResponseCode"], 137, "{report}");
    let shown = ssmx(&stack, &["commands", "show", &running]);
    stack.assert_exit(&shown, 1);

    let unknown = ssmx(
        &stack,
        &["commands", "show", "00000000-0000-0000-0000-000000000000"],
    );
    stack.assert_exit(&unknown, 2);
}

#[test]
fn ssmx_run_draws_a_progress_bar_on_a_terminal() {
    let stack = Stack::start();
    let command = stack.command_line(&[
        "run",
        "--instance-ids",
        &stack.instance_id,
        "--",
        "echo",
        "in-a-terminal",
    ]);
    let tmux = crate::common::Tmux::start(stack.dir.path(), &command, 120, 20);
    let screen = tmux.wait_for_text("[exit ");
    assert!(screen.contains("[exit 0]"), "{screen}");
    assert!(
        screen.contains(&format!("[{}] 1/1 done: Success 1", "#".repeat(24))),
        "{screen}"
    );
    assert!(screen.lines().any(|l| l == "in-a-terminal"), "{screen}");
}

/// Polls GetCommandInvocation (aws-cli) until the invocation's Status is `want`; the invocation.
fn wait_for_invocation(stack: &Stack, command_id: &str, want: &str) -> Value {
    crate::common::wait_for(
        || Some(get_invocation(stack, command_id)).filter(|i| i["Status"] == want),
        &format!("the invocation to be {want}"),
    )
}

#[test]
fn a_command_survives_the_gateway_killed_and_restarted() {
    let mut stack = Stack::start();
    let command_id = aws_send(&stack, "sleep 3; echo after-restart");
    wait_for_invocation(&stack, &command_id, "InProgress");
    stack.restart_gateway();
    let waited = aws_wait(&stack, &command_id);
    stack.assert_exit(&waited, 0);
    let invocation = get_invocation(&stack, &command_id);
    assert_eq!(invocation["Status"], "Success", "{invocation}");
    assert_eq!(invocation["ResponseCode"], 0, "{invocation}");
    assert_eq!(
        invocation["StandardOutputContent"], "after-restart\n",
        "{invocation}"
    );
}

#[test]
fn a_command_survives_the_agent_killed_mid_step_and_restarted() {
    let mut stack = Stack::start();
    let runs = stack.path("runs");
    let command_id = aws_send(
        &stack,
        &format!("echo run >> {}; sleep 3; echo finished", runs.display()),
    );
    crate::common::wait_for(|| runs.exists().then_some(()), "the step to start");
    stack.kill_agent();
    stack.start_agent();
    let waited = aws_wait(&stack, &command_id);
    stack.assert_exit(&waited, 0);
    let invocation = get_invocation(&stack, &command_id);
    assert_eq!(invocation["Status"], "Success", "{invocation}");
    assert_eq!(
        invocation["StandardOutputContent"], "finished\n",
        "{invocation}"
    );
    // As the official agent does, the interrupted step ran again from its start, once.
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "run\nrun\n");
    assert!(processes_of_command(&command_id).is_empty());
}

#[test]
fn a_command_for_a_stopped_agent_times_out_undelivered_and_never_runs() {
    let mut stack = Stack::start();
    stack.kill_agent();
    crate::common::wait_for(
        || {
            let status = stack.aws_json(&[
                "ssm",
                "get-connection-status",
                "--target",
                &stack.instance_id,
            ]);
            (status["Status"] == "notconnected").then_some(())
        },
        "the gateway to see the agent gone",
    );
    let marker = stack.path("ran");
    let parameters = serde_json::json!({
        "commands": [format!("touch {}", marker.display())],
        "executionTimeout": ["1"],
    });
    // The delivery deadline is TimeoutSeconds (30, the least the API takes) plus the
    // document's executionTimeout.
    let command_id = aws_send_with(
        &stack,
        &[
            "--timeout-seconds",
            "30",
            "--parameters",
            &parameters.to_string(),
        ],
    );
    let invocation = wait_for_invocation(&stack, &command_id, "TimedOut");
    assert_eq!(
        invocation["StatusDetails"], "DeliveryTimedOut",
        "{invocation}"
    );
    assert_eq!(invocation["ResponseCode"], -1, "{invocation}");
    let commands = stack.aws_json(&["ssm", "list-commands", "--command-id", &command_id]);
    let command = &commands["Commands"][0];
    assert_eq!(
        (&command["Status"], &command["StatusDetails"]),
        (&Value::from("TimedOut"), &Value::from("DeliveryTimedOut")),
        "{command}"
    );
    assert_eq!(
        (
            &command["TargetCount"],
            &command["CompletedCount"],
            &command["ErrorCount"],
            &command["DeliveryTimedOutCount"]
        ),
        (
            &Value::from(1),
            &Value::from(1),
            &Value::from(0),
            &Value::from(1)
        ),
        "{command}"
    );

    // The agent back: a later command runs, the timed-out one never does.
    stack.start_agent();
    let later = aws_send(&stack, "echo back");
    let waited = aws_wait(&stack, &later);
    stack.assert_exit(&waited, 0);
    assert!(!marker.exists(), "the timed-out command ran");
    let invocation = get_invocation(&stack, &command_id);
    assert_eq!(
        invocation["StatusDetails"], "DeliveryTimedOut",
        "{invocation}"
    );
}

/// Process ids of the processes whose environment carries `SSM_COMMAND_ID=command_id` (those
/// the agent runs for that command).
fn processes_of_command(command_id: &str) -> Vec<u32> {
    let needle = format!("SSM_COMMAND_ID={command_id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Sends `signal` (a `kill` name: INT, STOP, CONT) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} {pid}");
}

/// `ssmx run` of `sleep 600` on the stack's node, its stderr, and the command's id once the
/// node runs it.
fn ssmx_run_sleeping(
    stack: &Stack,
) -> (
    std::process::Child,
    std::io::BufReader<std::process::ChildStderr>,
    String,
) {
    let mut run = stack
        .ssmx()
        .args(["run", "--instance-ids", &stack.instance_id, "--"])
        .args(["sleep", "600"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let sent = crate::common::read_until(&mut stderr, " sent.");
    let command_id = sent
        .split("Command ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_owned();
    crate::common::wait_for(
        || (!processes_of_command(&command_id).is_empty()).then_some(()),
        "the command's process on the node",
    );
    (run, stderr, command_id)
}

/// The rest of a child's stderr, to its end.
fn rest_of(stderr: impl std::io::Read) -> String {
    let mut rest = String::new();
    std::io::BufReader::new(stderr)
        .read_to_string(&mut rest)
        .unwrap();
    rest
}

/// Waits until the command's invocation is Cancelled and the processes it ran are gone.
fn assert_cancelled_on_the_node(stack: &Stack, command_id: &str) {
    let invocation = wait_for_invocation(stack, command_id, "Cancelled");
    assert_eq!(invocation["StatusDetails"], "Cancelled", "{invocation}");
    crate::common::wait_for(
        || processes_of_command(command_id).is_empty().then_some(()),
        "the command's processes to end",
    );
}

#[test]
fn ctrl_c_in_ssmx_run_cancels_the_command_and_waits_for_it() {
    let stack = Stack::start();
    let (mut run, stderr, command_id) = ssmx_run_sleeping(&stack);
    signal(run.id(), "INT");
    let status = crate::common::wait_for(|| run.try_wait().unwrap(), "ssmx run to exit");
    let rest = rest_of(stderr);
    assert_eq!(status.code(), Some(130), "{rest}\n{}", stack.logs());
    assert!(rest.contains("Interrupted: cancelling command"), "{rest}");
    assert!(
        rest.contains(&format!("{}: Cancelled", stack.instance_id)),
        "{rest}"
    );
    assert_cancelled_on_the_node(&stack, &command_id);
}

#[test]
fn a_second_ctrl_c_stops_ssmx_run_waiting_for_the_cancel() {
    let stack = Stack::start();
    let (mut run, mut stderr, command_id) = ssmx_run_sleeping(&stack);
    // The agent stopped: the cancel cannot finish while it is.
    let agent = stack.agent_pid().unwrap();
    signal(agent, "STOP");
    signal(run.id(), "INT");
    crate::common::read_until(&mut stderr, "Interrupted: cancelling command");
    signal(run.id(), "INT");
    let status = crate::common::wait_for(|| run.try_wait().unwrap(), "ssmx run to exit");
    let rest = rest_of(stderr);
    signal(agent, "CONT");
    assert_eq!(status.code(), Some(130), "{rest}\n{}", stack.logs());
    assert!(rest.contains("stopped waiting"), "{rest}");
    assert!(!rest.contains("Cancelled"), "{rest}");
    // The cancel goes on without `ssmx run`.
    assert_cancelled_on_the_node(&stack, &command_id);
}

/// The plugins of the stack's invocation of `command_id`, by step name, from
/// `list-command-invocations --details`.
fn plugins_by_name(stack: &Stack, command_id: &str) -> std::collections::BTreeMap<String, Value> {
    let listed = stack.aws_json(&[
        "ssm",
        "list-command-invocations",
        "--command-id",
        command_id,
        "--details",
    ]);
    listed["CommandInvocations"][0]["CommandPlugins"]
        .as_array()
        .expect("CommandPlugins")
        .iter()
        .map(|p| (p["Name"].as_str().unwrap().to_owned(), p.clone()))
        .collect()
}

#[test]
fn documents_of_several_steps_run_as_the_official_agent_runs_them() {
    let stack = Stack::start();
    let marker = stack.path("never-ran");
    let document = serde_json::json!({
        "schemaVersion": "2.2",
        "description": "steps, parameters, preconditions and exit codes",
        "parameters": {
            "greeting": {"type": "String", "default": "hello"},
            "exitCode": {"type": "String", "allowedPattern": "^[0-9]+$"},
        },
        "mainSteps": [
            {"action": "aws:runShellScript", "name": "greet",
             "inputs": {"runCommand": ["echo {{ greeting }}-$((6*7))"]}},
            {"action": "aws:runShellScript", "name": "windowsOnly",
             "precondition": {"StringEquals": ["platformType", "Windows"]},
             "inputs": {"runCommand": ["echo must-not-run"]}},
            {"action": "aws:runShellScript", "name": "decide",
             "inputs": {"runCommand": ["echo deciding; exit {{ exitCode }}"]}},
            {"action": "aws:runShellScript", "name": "after",
             "inputs": {"runCommand": [format!("touch {}", marker.display())]}},
        ],
    });
    let content = stack.path("steps.json");
    std::fs::write(&content, document.to_string()).unwrap();
    stack.aws_json(&[
        "ssm",
        "create-document",
        "--name",
        "Steps",
        "--document-type",
        "Command",
        "--content",
        &format!("file://{}", content.display()),
    ]);
    let run = |exit_code: &str| {
        let sent = stack.aws_json(&[
            "ssm",
            "send-command",
            "--document-name",
            "Steps",
            "--instance-ids",
            &stack.instance_id,
            "--parameters",
            &format!("exitCode={exit_code}"),
        ]);
        let id = sent["Command"]["CommandId"].as_str().unwrap().to_owned();
        let _ = aws_wait(&stack, &id);
        let listed = stack.aws_json(&["ssm", "list-commands", "--command-id", &id]);
        (
            listed["Commands"][0]["Status"].as_str().unwrap().to_owned(),
            plugins_by_name(&stack, &id),
        )
    };

    // 168: this step succeeded and the rest are skipped; the command succeeds.
    let (status, plugins) = run("168");
    assert_eq!(status, "Success", "{plugins:#?}");
    assert_eq!(plugins["greet"]["Status"], "Success");
    assert_eq!(plugins["greet"]["Output"], "hello-42\n");
    assert_eq!(plugins["windowsOnly"]["Status"], "Skipped", "{plugins:#?}");
    assert_eq!(plugins["decide"]["Status"], "Success", "{plugins:#?}");
    assert_eq!(plugins["after"]["Status"], "Skipped", "{plugins:#?}");
    assert!(!marker.exists(), "a step after exit 168 ran");

    // 169: this step failed and the rest are skipped.
    let (status, plugins) = run("169");
    assert_eq!(status, "Failed", "{plugins:#?}");
    assert_eq!(plugins["decide"]["Status"], "Failed", "{plugins:#?}");
    assert_eq!(plugins["after"]["Status"], "Skipped", "{plugins:#?}");
    assert!(!marker.exists(), "a step after exit 169 ran");

    // 1: this step failed with its code; the next step still runs (onFailure is not exit).
    let (status, plugins) = run("1");
    assert_eq!(status, "Failed", "{plugins:#?}");
    assert_eq!(plugins["decide"]["Status"], "Failed");
    assert_eq!(plugins["decide"]["ResponseCode"], 1);
    assert_eq!(plugins["after"]["Status"], "Success", "{plugins:#?}");
    assert!(marker.exists(), "the step after a failed one did not run");

    // A value the document's pattern refuses is an InvalidParameters error naming it.
    let out = stack
        .aws()
        .args([
            "ssm",
            "send-command",
            "--document-name",
            "Steps",
            "--instance-ids",
            &stack.instance_id,
        ])
        .args(["--parameters", "exitCode=one"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("InvalidParameters")
            && stderr.contains("exitCode"),
        "{stderr}"
    );

    // executionTimeout ends the step TimedOut and kills its processes.
    let sent = aws_send_with(
        &stack,
        &[
            "--parameters",
            r#"{"commands":["sleep 300"],"executionTimeout":["2"]}"#,
        ],
    );
    let _ = aws_wait(&stack, &sent);
    let invocation = get_invocation(&stack, &sent);
    assert_eq!(invocation["Status"], "TimedOut", "{invocation}");
    assert_eq!(
        invocation["StatusDetails"], "ExecutionTimedOut",
        "{invocation}"
    );
    crate::common::wait_for(
        || processes_of_command(&sent).is_empty().then_some(()),
        "the timed-out script's processes gone",
    );
}
