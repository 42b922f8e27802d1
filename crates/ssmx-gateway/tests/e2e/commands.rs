//! Run Command through a real gateway with aws-sdk-ssm on one side and scripted agents on their
//! control channels on the other: delivery and resend until acknowledged, replies applied (a late
//! one never overwrites a final status), rate control, MaxErrors, cancel, parameter errors.

use std::time::Duration;

use crate::common::*;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::CommandInvocationStatus;
use futures::SinkExt;
use ssmx_protocol::command::{
    ack_code, AgentJob, AgentJobAck, AgentJobReply, CommandReply, PluginResult, SendCommandPayload,
};
use ssmx_protocol::{AgentMessage, MessageType};
use tokio_tungstenite::tungstenite::Message;

const PLUGIN: &str = "aws:runShellScript";

async fn ack(ctl: &mut ControlChannel, frame: &AgentMessage, job: &AgentJob, code: &str) {
    let ack = AgentJobAck {
        job_id: job.job_id.clone(),
        acknowledged_message_id: frame.message_id.hyphenated().to_string(),
        created_date: "2026-01-01T00:00:00.000Z".into(),
        status_code: code.into(),
        error_message: ack_code::message(code).into(),
    };
    ctl.ws
        .send(Message::binary(ack.to_message().to_bytes()))
        .await
        .unwrap();
}

fn result(status: &str, code: i64, stdout: &str) -> CommandReply {
    let plugin = PluginResult {
        status: status.into(),
        code,
        name: PLUGIN.into(),
        output: stdout.into(),
        start_date_time: "2026-11-22T00:43:00.489Z".into(),
        end_date_time: "2026-11-22T00:43:01.030Z".into(),
        standard_output: stdout.into(),
        ..Default::default()
    };
    CommandReply {
        document_status: status.into(),
        runtime_status: Some([(PLUGIN.to_owned(), plugin)].into()),
        ..Default::default()
    }
}

/// Sends a reply; returns once the gateway acknowledged it.
async fn reply(ctl: &mut ControlChannel, job: &AgentJob, content: &CommandReply) {
    let frame = AgentJobReply::new(job.job_id.clone(), "aws.ssm.sendCommand", content).to_message();
    let id = frame.message_id.hyphenated().to_string();
    ctl.ws
        .send(Message::binary(frame.to_bytes()))
        .await
        .unwrap();
    loop {
        let msg = next_message(&mut ctl.ws).await;
        if msg.message_type == MessageType::AgentJobReplyAck {
            let ack: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(ack["jobId"], job.job_id.as_str());
            assert_eq!(ack["acknowledgedMessageId"], id.as_str());
            return;
        }
    }
}

/// Polls until the invocation has `want` (the agent's acks are applied asynchronously).
async fn wait_for_status(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    instance_id: &str,
    want: CommandInvocationStatus,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let inv = invocation_status(ssm, command_id, instance_id).await;
        if inv.status() == Some(&want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {:?}",
            inv.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn invocation_status(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    instance_id: &str,
) -> aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput {
    ssm.get_command_invocation()
        .command_id(command_id)
        .instance_id(instance_id)
        .send()
        .await
        .unwrap()
}

/// The command as ListCommands reports it.
async fn listed_command(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
) -> aws_sdk_ssm::types::Command {
    let listed = ssm
        .list_commands()
        .command_id(command_id)
        .send()
        .await
        .unwrap();
    listed.commands()[0].clone()
}

/// The command's first invocation as ListCommandInvocations reports it, with its plugins.
async fn listed_invocation(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
) -> aws_sdk_ssm::types::CommandInvocation {
    let listed = ssm
        .list_command_invocations()
        .command_id(command_id)
        .details(true)
        .send()
        .await
        .unwrap();
    listed.command_invocations()[0].clone()
}

#[tokio::test]
async fn a_command_is_delivered_resent_until_acked_and_its_results_kept() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids(&agent.instance_id)
        .parameters("commands", vec!["echo hello".into(), "uname -s".into()])
        .comment("smoke")
        .send()
        .await
        .unwrap();
    let command = sent.command().unwrap();
    let command_id = command.command_id().unwrap().to_owned();
    assert_eq!(command_id.len(), 36);
    assert_eq!(command.target_count(), 1);

    // The invocation exists as soon as SendCommand answered.
    let early = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert!(matches!(
        early.status(),
        Some(CommandInvocationStatus::Pending | CommandInvocationStatus::InProgress)
    ));

    let (frame, job) = next_job(&mut ctl).await;
    assert_eq!(
        job.job_id,
        format!("aws.ssm.{command_id}.{}", agent.instance_id)
    );
    assert!(job.topic.starts_with("aws.ssm.sendCommand"));
    let payload: SendCommandPayload = serde_json::from_str(&job.content).unwrap();
    assert_eq!(payload.command_id, command_id);
    assert_eq!(
        payload.parameters["commands"],
        serde_json::json!(["echo hello", "uname -s"])
    );
    assert_eq!(payload.parameters["executionTimeout"], "3600");
    assert_eq!(payload.document_content["schemaVersion"], "1.2");

    // Not acknowledged: the same job comes again.
    let (again, job_again) = tokio::time::timeout(Duration::from_secs(15), next_job(&mut ctl))
        .await
        .expect("resent");
    assert_eq!(job_again.job_id, job.job_id);
    ack(&mut ctl, &again, &job_again, ack_code::SUCCESSFUL).await;
    let _ = frame;

    reply(&mut ctl, &job, &result("InProgress", 0, "")).await;
    reply(&mut ctl, &job, &result("Success", 0, "hello\nLinux\n")).await;
    // A late, reordered InProgress reply changes nothing.
    reply(&mut ctl, &job, &result("InProgress", 0, "")).await;

    let done = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert_eq!(done.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(done.response_code(), 0);
    assert_eq!(done.standard_output_content(), Some("hello\nLinux\n"));
    assert_eq!(done.plugin_name(), Some(PLUGIN));
    assert_eq!(done.execution_elapsed_time(), Some("PT0.541S"));

    let inv = listed_invocation(&ssm, &command_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(inv.command_plugins()[0].name(), Some(PLUGIN));
    assert_eq!(inv.command_plugins()[0].output(), Some("hello\nLinux\n"));
    let commands = ssm.list_commands().send().await.unwrap();
    let c = &commands.commands()[0];
    assert_eq!(c.command_id(), Some(command_id.as_str()));
    assert_eq!(c.status().map(|s| s.as_str()), Some("Success"));
    assert_eq!((c.completed_count(), c.error_count()), (1, 0));
    gateway.shutdown().await;
}

/// One plugin's (step's) result, as an intermediate reply carries it.
fn step_result(step: &str, status: &str, stdout: &str) -> CommandReply {
    let plugin = PluginResult {
        status: status.into(),
        name: PLUGIN.into(),
        step_name: step.into(),
        output: stdout.into(),
        standard_output: stdout.into(),
        ..Default::default()
    };
    CommandReply {
        document_status: "InProgress".into(),
        runtime_status: Some([(step.to_owned(), plugin)].into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn reordered_replies_never_undo_a_final_status_and_late_step_results_are_kept() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let steps = serde_json::json!({
        "schemaVersion": "2.2",
        "description": "two steps",
        "mainSteps": [
            {"action": PLUGIN, "name": "first", "inputs": {"runCommand": ["echo one"]}},
            {"action": PLUGIN, "name": "second", "inputs": {"runCommand": ["echo two"]}},
        ],
    });
    ssm.create_document()
        .name("Two-Steps")
        .content(steps.to_string())
        .document_type(aws_sdk_ssm::types::DocumentType::Command)
        .send()
        .await
        .unwrap();
    let sent = ssm
        .send_command()
        .document_name("Two-Steps")
        .instance_ids(&agent.instance_id)
        .send()
        .await
        .unwrap();
    let command_id = sent.command().unwrap().command_id().unwrap().to_owned();
    let (frame, job) = next_job(&mut ctl).await;
    ack(&mut ctl, &frame, &job, ack_code::SUCCESSFUL).await;

    // The final reply (of a document of two steps it carries no step results) overtakes the
    // others: the intermediate InProgress reply, then each step's own reply, then a stale one.
    let final_reply = CommandReply {
        document_status: "Success".into(),
        ..Default::default()
    };
    reply(&mut ctl, &job, &final_reply).await;
    reply(&mut ctl, &job, &step_result("first", "InProgress", "")).await;
    reply(&mut ctl, &job, &step_result("first", "Success", "one\n")).await;
    reply(&mut ctl, &job, &step_result("second", "Success", "two\n")).await;
    reply(&mut ctl, &job, &step_result("first", "InProgress", "")).await;

    let inv = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
    assert_eq!(inv.status_details(), Some("Success"));
    let second = ssm
        .get_command_invocation()
        .command_id(&command_id)
        .instance_id(&agent.instance_id)
        .plugin_name("second")
        .send()
        .await
        .unwrap();
    assert_eq!(second.standard_output_content(), Some("two\n"));
    assert_eq!(second.response_code(), 0);

    let inv = listed_invocation(&ssm, &command_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
    let plugins: Vec<(&str, &str, &str, i32)> = inv
        .command_plugins()
        .iter()
        .map(|p| {
            (
                p.name().unwrap(),
                p.status().unwrap().as_str(),
                p.output().unwrap(),
                p.response_code(),
            )
        })
        .collect();
    assert_eq!(
        plugins,
        [
            ("first", "Success", "one\n", 0),
            ("second", "Success", "two\n", 0)
        ]
    );
    let c = listed_command(&ssm, &command_id).await;
    assert_eq!(
        (c.status().map(|s| s.as_str()), c.status_details()),
        (Some("Success"), Some("Success"))
    );
    assert_eq!(
        (c.target_count(), c.completed_count(), c.error_count()),
        (1, 1, 0)
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn parameters_and_targets_are_validated() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let send = |params: Vec<(&str, Vec<String>)>, target: &str| {
        let mut req = ssm
            .send_command()
            .document_name("AWS-RunShellScript")
            .instance_ids(target);
        for (k, v) in params {
            req = req.parameters(k, v);
        }
        req.send()
    };
    let err = send(vec![], &agent.instance_id).await.unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameters"));
    assert!(err.message().unwrap().contains("commands"));
    let err = send(
        vec![
            ("commands", vec!["true".into()]),
            ("executionTimeout", vec!["0".into()]),
        ],
        &agent.instance_id,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("InvalidParameters"));
    assert!(err.message().unwrap().contains("executionTimeout"));
    let err = send(
        vec![("commands", vec!["true".into()])],
        "mi-00000000000000000",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some("InvalidInstanceId"));
    let err = ssm
        .send_command()
        .document_name("No-Such-Document")
        .instance_ids(&agent.instance_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidDocument"));
    let err = ssm
        .get_command_invocation()
        .command_id("00000000-0000-0000-0000-000000000000")
        .instance_id(&agent.instance_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvocationDoesNotExist"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn dispatch_ramps_up_and_max_errors_terminates_the_rest() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let mut agents = Vec::new();
    for _ in 0..4 {
        let agent = register_agent(&gateway).await;
        let ctl = open_control_channel(&gateway, &agent).await;
        agents.push((agent, ctl));
    }
    let ids: Vec<String> = agents.iter().map(|(a, _)| a.instance_id.clone()).collect();
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .set_instance_ids(Some(ids.clone()))
        .parameters("commands", vec!["false".into()])
        .max_concurrency("2")
        .max_errors("0")
        .send()
        .await
        .unwrap();
    let command_id = sent.command().unwrap().command_id().unwrap().to_owned();

    // One instance first; the others get nothing while it runs.
    let (frame, job) = next_job(&mut agents[0].1).await;
    for (_, ctl) in agents.iter_mut().skip(1) {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), next_job(ctl))
                .await
                .is_err(),
            "dispatched beyond the ramp"
        );
    }
    ack(&mut agents[0].1, &frame, &job, ack_code::SUCCESSFUL).await;
    reply(&mut agents[0].1, &job, &result("Failed", 1, "")).await;

    // One error with MaxErrors 0: nothing more is dispatched, the rest are Terminated.
    for id in &ids[1..] {
        let inv = invocation_status(&ssm, &command_id, id).await;
        assert_eq!(inv.status(), Some(&CommandInvocationStatus::Cancelled));
        assert_eq!(inv.status_details(), Some("Terminated"));
    }
    let first = invocation_status(&ssm, &command_id, &ids[0]).await;
    assert_eq!(first.status(), Some(&CommandInvocationStatus::Failed));
    assert_eq!(first.response_code(), 1);
    let c = listed_command(&ssm, &command_id).await;
    assert_eq!(c.status().map(|s| s.as_str()), Some("Failed"));
    assert_eq!(
        (c.target_count(), c.completed_count(), c.error_count()),
        (4, 4, 1)
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn cancel_sends_a_cancel_job_and_the_agent_reports_cancelled() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids(&agent.instance_id)
        .parameters("commands", vec!["sleep 600".into()])
        .send()
        .await
        .unwrap();
    let command_id = sent.command().unwrap().command_id().unwrap().to_owned();
    let (frame, job) = next_job(&mut ctl).await;
    ack(&mut ctl, &frame, &job, ack_code::SUCCESSFUL).await;
    ssm.cancel_command()
        .command_id(&command_id)
        .send()
        .await
        .unwrap();
    let (cancel_frame, cancel) = next_job(&mut ctl).await;
    assert!(cancel.is_cancel());
    let payload: serde_json::Value = serde_json::from_str(&cancel.content).unwrap();
    assert_eq!(payload["CancelMessageId"], job.job_id.as_str());
    ack(&mut ctl, &cancel_frame, &cancel, ack_code::SUCCESSFUL).await;
    assert_eq!(
        listed_command(&ssm, &command_id)
            .await
            .status()
            .map(|s| s.as_str()),
        Some("Cancelling")
    );
    reply(&mut ctl, &job, &result("Cancelled", 137, "")).await;
    let inv = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Cancelled));
    assert_eq!(inv.response_code(), 137);
    assert_eq!(
        listed_command(&ssm, &command_id)
            .await
            .status()
            .map(|s| s.as_str()),
        Some("Cancelled")
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_command_for_an_offline_agent_waits_and_is_delivered_when_it_connects() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let sent = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .instance_ids(&agent.instance_id)
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .unwrap();
    let command_id = sent.command().unwrap().command_id().unwrap().to_owned();
    let inv = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Pending));
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let (frame, job) = next_job(&mut ctl).await;
    assert_eq!(
        job.job_id,
        format!("aws.ssm.{command_id}.{}", agent.instance_id)
    );
    // A duplicate answer (the agent saw the job before a restart) is not a failure.
    ack(&mut ctl, &frame, &job, ack_code::DUPLICATE_COMMAND).await;
    reply(&mut ctl, &job, &result("Success", 0, "ok\n")).await;
    let inv = invocation_status(&ssm, &command_id, &agent.instance_id).await;
    assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
    gateway.shutdown().await;
}

#[test]
fn commands_in_flight_survive_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = ssmx_gateway::config::Database::File(dir.path().join("gateway.db"));
    let crashed = tokio::runtime::Runtime::new().unwrap();
    let (agent, user, running, queued, job) = crashed.block_on(async {
        let (gateway, cred) = start_gateway_with("ops", None, db.clone()).await;
        let ssm = ssm_client(gateway.url(), &cred);
        let agent = register_agent(&gateway).await;
        let mut ctl = open_control_channel(&gateway, &agent).await;
        let send = || {
            ssm.send_command()
                .document_name("AWS-RunShellScript")
                .instance_ids(&agent.instance_id)
                .parameters("commands", vec!["sleep 1".into()])
                .max_concurrency("1")
                .send()
        };
        let running = send()
            .await
            .unwrap()
            .command()
            .unwrap()
            .command_id()
            .unwrap()
            .to_owned();
        let (frame, job) = next_job(&mut ctl).await;
        ack(&mut ctl, &frame, &job, ack_code::SUCCESSFUL).await;
        wait_for_status(
            &ssm,
            &running,
            &agent.instance_id,
            CommandInvocationStatus::InProgress,
        )
        .await;
        // A second command whose job is lost with the crash before the agent saw it.
        let queued = send()
            .await
            .unwrap()
            .command()
            .unwrap()
            .command_id()
            .unwrap()
            .to_owned();
        std::mem::forget((gateway, ctl));
        (agent, cred, running, queued, job)
    });
    crashed.shutdown_background();

    let restarted = tokio::runtime::Runtime::new().unwrap();
    restarted.block_on(async {
        let gateway = ssmx_gateway::Gateway::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .database(db)
            .credential(user.clone())
            .without_recording()
            .start()
            .await
            .unwrap();
        let ssm = ssm_client(gateway.url(), &user);
        let inv = invocation_status(&ssm, &running, &agent.instance_id).await;
        assert_eq!(inv.status(), Some(&CommandInvocationStatus::InProgress));
        let mut ctl = open_control_channel(&gateway, &agent).await;
        // The final reply of the running command arrives after the restart and is applied.
        reply(&mut ctl, &job, &result("Success", 0, "done\n")).await;
        let inv = invocation_status(&ssm, &running, &agent.instance_id).await;
        assert_eq!(inv.status(), Some(&CommandInvocationStatus::Success));
        assert_eq!(inv.standard_output_content(), Some("done\n"));
        // The second command's job is (re)sent by the restarted gateway.
        let (_, job) = next_job(&mut ctl).await;
        assert_eq!(
            job.job_id,
            format!("aws.ssm.{queued}.{}", agent.instance_id)
        );
        gateway.shutdown().await;
    });
}
