//! Documents inside documents, end to end through the real gateway and agent: Command documents
//! created with CreateDocument are run through the built-in AWS-RunDocument with
//! `documentParameters`, nested up to the official depth of three and refused at four; sources
//! the agent cannot reach fail with a clear message.

use std::time::Duration;

use crate::common::{Stack, STEP};
use aws_sdk_ssm::types::{CommandInvocationStatus, DocumentType};
use serde_json::{json, Value};

/// A Command document greeting with its `greeting` parameter.
fn greeter() -> Value {
    json!({"schemaVersion":"2.2","description":"greets",
        "parameters":{"greeting":{"type":"String","default":"hi"}},
        "mainSteps":[{"action":"aws:runShellScript","name":"greet",
            "inputs":{"runCommand":["echo {{ greeting }} from nested"]}}]})
}

/// A Command document whose one step runs the stored document `inner`.
fn runs(inner: &str) -> Value {
    json!({"schemaVersion":"2.2","description":"nests",
        "mainSteps":[{"action":"aws:runDocument","name":"nest",
            "inputs":{"documentType":"SSMDocument","documentPath":inner}}]})
}

async fn create_document(stack: &Stack, name: &str, content: &Value) {
    stack
        .ssm
        .create_document()
        .name(name)
        .content(content.to_string())
        .document_type(DocumentType::Command)
        .send()
        .await
        .unwrap_or_else(|e| panic!("CreateDocument {name}: {e:?}"));
}

/// Sends AWS-RunDocument with `parameters`; the final status and each plugin's output.
async fn run_document(
    stack: &Stack,
    parameters: &[(&str, &str)],
) -> (CommandInvocationStatus, Vec<(String, String, String)>) {
    let command_id = stack.send_command("AWS-RunDocument", parameters).await;
    let deadline = tokio::time::Instant::now() + STEP;
    let invocation = loop {
        let listed = stack
            .ssm
            .list_command_invocations()
            .command_id(&command_id)
            .details(true)
            .send()
            .await
            .unwrap();
        let invocation = listed.command_invocations()[0].clone();
        let status = invocation.status().cloned().unwrap();
        if !matches!(
            status,
            CommandInvocationStatus::Pending | CommandInvocationStatus::InProgress
        ) {
            break invocation;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let plugins = invocation
        .command_plugins()
        .iter()
        .map(|p| {
            (
                p.name().unwrap_or_default().to_owned(),
                p.status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                p.output().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (invocation.status().cloned().unwrap(), plugins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_documents_run_through_aws_run_document_up_to_three_deep() {
    let state = tempfile::tempdir().unwrap();
    let commands_dir = state.path().to_owned();
    let stack = Stack::start_with(&[], |config| config.commands_dir = Some(commands_dir)).await;
    create_document(&stack, "Greeter", &greeter()).await;
    create_document(&stack, "Nest1", &runs("Nest2")).await;
    create_document(&stack, "Nest2", &runs("Nest3")).await;
    create_document(&stack, "Nest3", &runs("Greeter")).await;

    // One level, with parameters: the nested step's output is the runDocument step's.
    let (status, plugins) = run_document(
        &stack,
        &[
            ("sourceType", "SSMDocument"),
            ("sourceInfo", r#"{"name":"Greeter"}"#),
            ("documentParameters", r#"{"greeting":"hello"}"#),
        ],
    )
    .await;
    assert_eq!(status, CommandInvocationStatus::Success, "{plugins:?}");
    assert_eq!(plugins[0].0, "downloadContent");
    assert_eq!(plugins[0].1, "Success");
    assert_eq!(
        plugins[1],
        (
            "runDocument".to_owned(),
            "Success".to_owned(),
            "hello from nested\n".to_owned()
        )
    );

    // Three levels (AWS-RunDocument → Nest2 → Nest3 → Greeter), defaults taken.
    let (status, plugins) = run_document(
        &stack,
        &[
            ("sourceType", "SSMDocument"),
            ("sourceInfo", r#"{"name":"Nest2"}"#),
        ],
    )
    .await;
    assert_eq!(status, CommandInvocationStatus::Success, "{plugins:?}");
    assert_eq!(plugins[1].2, "hi from nested\n");

    // Four levels are refused.
    let (status, plugins) = run_document(
        &stack,
        &[
            ("sourceType", "SSMDocument"),
            ("sourceInfo", r#"{"name":"Nest1"}"#),
        ],
    )
    .await;
    assert_eq!(status, CommandInvocationStatus::Failed, "{plugins:?}");
    assert_eq!(plugins[1].1, "Failed");
    assert!(
        plugins[1].2.contains(
            "Maximum depth for document execution exceeded. Maximum depth permitted - 3 and current depth - 4"
        ),
        "{plugins:?}"
    );

    // The agent reaches only its gateway.
    let (status, plugins) = run_document(
        &stack,
        &[
            ("sourceType", "GitHub"),
            (
                "sourceInfo",
                r#"{"owner":"o","repository":"r","path":"d.json"}"#,
            ),
        ],
    )
    .await;
    assert_eq!(status, CommandInvocationStatus::Failed);
    assert_eq!(plugins[0].1, "Failed");
    assert!(
        plugins[0]
            .2
            .contains("sourceType GitHub is not supported by this agent"),
        "{plugins:?}"
    );
    stack.stop().await;
}
