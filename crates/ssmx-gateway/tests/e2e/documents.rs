//! Documents through aws-sdk-ssm against a real gateway: created in JSON or YAML, versioned,
//! described, read back in either format, listed with filters, their default version moved,
//! deleted; AWS-owned ones read-only; and a created Command document sent to an agent, a created
//! Session document used by StartSession.

use crate::common::*;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{
    DocumentFormat, DocumentKeyValuesFilter, DocumentType, ResourceTypeForTagging, Tag,
};
use ssmx_protocol::command::SendCommandPayload;

const COMMAND_YAML: &str = r#"schemaVersion: "2.2"
description: Greets someone.
parameters:
  who:
    type: String
    default: world
    allowedPattern: "^[a-z]+$"
mainSteps:
  - action: aws:runShellScript
    name: greet
    inputs:
      runCommand:
        - echo hello {{ who }}
"#;

fn code_of<E: ProvideErrorMetadata>(e: &E) -> String {
    e.code().unwrap_or_default().to_owned()
}

async fn create(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
    content: &str,
    kind: DocumentType,
    format: DocumentFormat,
) -> Result<
    aws_sdk_ssm::operation::create_document::CreateDocumentOutput,
    aws_sdk_ssm::error::SdkError<aws_sdk_ssm::operation::create_document::CreateDocumentError>,
> {
    ssm.create_document()
        .name(name)
        .content(content)
        .document_type(kind)
        .document_format(format)
        .send()
        .await
}

#[tokio::test]
async fn documents_are_created_versioned_listed_and_deleted() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);

    let created = create(
        &ssm,
        "Greet",
        COMMAND_YAML,
        DocumentType::Command,
        DocumentFormat::Yaml,
    )
    .await
    .unwrap()
    .document_description
    .unwrap();
    assert_eq!(created.name(), Some("Greet"));
    assert_eq!(created.document_version(), Some("1"));
    assert_eq!(created.default_version(), Some("1"));
    assert_eq!(created.schema_version(), Some("2.2"));
    assert_eq!(created.document_format(), Some(&DocumentFormat::Yaml));
    assert_eq!(
        created.owner(),
        Some(ssmx_gateway::config::DEFAULT_ACCOUNT_ID)
    );
    let parameter = &created.parameters()[0];
    assert_eq!(parameter.name(), Some("who"));
    assert_eq!(parameter.default_value(), Some("world"));
    assert_eq!(created.hash().map(str::len), Some(64));

    // Read back as JSON: the same document.
    let json = ssm
        .get_document()
        .name("Greet")
        .document_format(DocumentFormat::Json)
        .send()
        .await
        .unwrap();
    let content: serde_json::Value = serde_json::from_str(json.content().unwrap()).unwrap();
    assert_eq!(
        content["mainSteps"][0]["inputs"]["runCommand"][0],
        "echo hello {{ who }}"
    );

    // A new version; the default stays until moved.
    let v2 = COMMAND_YAML.replace("hello", "hi");
    let updated = ssm
        .update_document()
        .name("Greet")
        .content(&v2)
        .document_version("$LATEST")
        .document_format(DocumentFormat::Yaml)
        .send()
        .await
        .unwrap()
        .document_description
        .unwrap();
    assert_eq!(updated.document_version(), Some("2"));
    assert_eq!(updated.latest_version(), Some("2"));
    assert_eq!(updated.default_version(), Some("1"));
    let err = ssm
        .update_document()
        .name("Greet")
        .content(&v2)
        .document_version("$LATEST")
        .document_format(DocumentFormat::Yaml)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "DuplicateDocumentContent");
    let err = ssm
        .update_document()
        .name("Greet")
        .content(COMMAND_YAML.replace("hello", "hey"))
        .document_version("1")
        .document_format(DocumentFormat::Yaml)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentVersion");
    ssm.update_document_default_version()
        .name("Greet")
        .document_version("2")
        .send()
        .await
        .unwrap();
    let described = ssm
        .describe_document()
        .name("Greet")
        .send()
        .await
        .unwrap()
        .document
        .unwrap();
    assert_eq!(described.document_version(), Some("2"));
    assert_eq!(described.default_version(), Some("2"));
    let v1 = ssm
        .get_document()
        .name("Greet")
        .document_version("1")
        .document_format(DocumentFormat::Yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(v1.content(), Some(COMMAND_YAML), "kept as written");

    // Listing: ours with Owner=Self, AWS's with Owner=Amazon, by type, with tags.
    ssm.add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::Document)
        .resource_id("Greet")
        .tags(Tag::builder().key("Team").value("ops").build().unwrap())
        .send()
        .await
        .unwrap();
    let list = |key: &str, value: &str| {
        let ssm = ssm.clone();
        let filter = DocumentKeyValuesFilter::builder()
            .key(key)
            .values(value)
            .build();
        async move {
            let mut names: Vec<String> = ssm
                .list_documents()
                .filters(filter)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .unwrap()
                .into_iter()
                .filter_map(|d| d.name)
                .collect();
            names.sort();
            names
        }
    };
    // The preferences document lives in the account, as on AWS.
    assert_eq!(
        list("Owner", "Self").await,
        ["Greet", "SSM-SessionManagerRunShell"]
    );
    assert!(list("Owner", "Amazon")
        .await
        .contains(&"AWS-RunShellScript".to_owned()));
    let sessions = list("DocumentType", "Session").await;
    assert!(sessions.contains(&"AWS-StartPortForwardingSession".to_owned()));
    assert!(!sessions.contains(&"Greet".to_owned()));
    assert_eq!(list("tag:Team", "ops").await, ["Greet"]);

    // Refusals.
    let err = create(
        &ssm,
        "Greet",
        COMMAND_YAML,
        DocumentType::Command,
        DocumentFormat::Yaml,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "DocumentAlreadyExists");
    let err = create(
        &ssm,
        "AWS-Mine",
        COMMAND_YAML,
        DocumentType::Command,
        DocumentFormat::Yaml,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "ValidationException");
    let err = create(
        &ssm,
        "Broken",
        "{not json",
        DocumentType::Command,
        DocumentFormat::Json,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentContent");
    let err = create(
        &ssm,
        "Future",
        r#"{"schemaVersion":"9.9","mainSteps":[]}"#,
        DocumentType::Command,
        DocumentFormat::Json,
    )
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentSchemaVersion");
    let err = ssm
        .update_document()
        .name("AWS-RunShellScript")
        .content(COMMAND_YAML)
        .document_format(DocumentFormat::Yaml)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentOperation");
    let err = ssm
        .delete_document()
        .name("Greet")
        .document_version("2")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentOperation");

    // Deleting a version, then the document.
    ssm.delete_document()
        .name("Greet")
        .document_version("1")
        .send()
        .await
        .unwrap();
    let err = ssm
        .get_document()
        .name("Greet")
        .document_version("1")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocumentVersion");
    ssm.delete_document().name("Greet").send().await.unwrap();
    let err = ssm.get_document().name("Greet").send().await.unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocument");
    assert_eq!(list("Owner", "Self").await, ["SSM-SessionManagerRunShell"]);
    gateway.shutdown().await;
}

/// Creates the Session document `Port-8080` (a port session to 8080).
async fn create_port_document(ssm: &aws_sdk_ssm::Client) {
    let document = serde_json::json!({
        "schemaVersion": "1.0",
        "description": "Port 8080",
        "sessionType": "Port",
        "properties": {"portNumber": "8080"}
    });
    create(
        ssm,
        "Port-8080",
        &document.to_string(),
        DocumentType::Session,
        DocumentFormat::Json,
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn created_documents_run_commands_and_sessions() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    create(
        &ssm,
        "Greet",
        COMMAND_YAML,
        DocumentType::Command,
        DocumentFormat::Yaml,
    )
    .await
    .unwrap();

    // Parameters are checked against the created document, defaults filled.
    let err = ssm
        .send_command()
        .document_name("Greet")
        .instance_ids(&agent.instance_id)
        .parameters("who", vec!["NOT LOWER".into()])
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidParameters");
    ssm.send_command()
        .document_name("Greet")
        .instance_ids(&agent.instance_id)
        .send()
        .await
        .unwrap();
    let (_, job) = next_job(&mut ctl).await;
    let payload: SendCommandPayload = serde_json::from_str(&job.content).unwrap();
    assert_eq!(payload.document_name, "Greet");
    assert_eq!(payload.document_content["schemaVersion"], "2.2");
    assert_eq!(payload.parameters["who"], "world");

    // A Session document of our own, used by StartSession.
    create_port_document(&ssm).await;
    let started = start_session(&ssm, &agent, Some("Port-8080")).await;
    let _client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    // The job above is resent until acknowledged; the session request comes among them.
    let task = tokio::time::timeout(WAIT, async {
        loop {
            let msg = next_message(&mut ctl.ws).await;
            if msg.message_type == ssmx_protocol::MessageType::InteractiveShell {
                break ssmx_protocol::payload::AgentTaskPayload::from_message_payload(&msg.payload)
                    .unwrap();
            }
        }
    })
    .await
    .expect("interactive_shell");
    assert_eq!(task.document_name, "Port-8080");
    assert_eq!(task.document_content.session_type, "Port");
    // A Command document is not a Session document, nor the other way round.
    let err = ssm
        .start_session()
        .target(&agent.instance_id)
        .document_name("Greet")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocument");
    let err = ssm
        .send_command()
        .document_name("Port-8080")
        .instance_ids(&agent.instance_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "InvalidDocument");
    gateway.shutdown().await;
}

/// The task the agent is sent for a session started (with its client attached) on `document`.
async fn session_task(
    ssm: &aws_sdk_ssm::Client,
    agent: &AgentCredential,
    ctl: &mut ControlChannel,
    document: Option<&str>,
) -> ssmx_protocol::payload::AgentTaskPayload {
    let started = start_session(ssm, agent, document).await;
    let _client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    expect_interactive_shell(ctl).await
}

#[tokio::test]
async fn the_preferences_document_is_updated_and_its_default_version_starts_sessions() {
    const PREFERENCES: &str = "SSM-SessionManagerRunShell";
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let mut ctl = open_control_channel(&gateway, &agent).await;
    let preferences = serde_json::json!({
        "schemaVersion": "1.0",
        "description": "Team preferences",
        "sessionType": "Standard_Stream",
        "inputs": {"idleSessionTimeout": "15", "shellProfile": {"linux": "cd /tmp", "windows": ""}}
    });
    let updated = ssm
        .update_document()
        .name(PREFERENCES)
        .document_version("$LATEST")
        .content(preferences.to_string())
        .send()
        .await
        .unwrap();
    let description = updated.document_description().unwrap();
    assert_eq!(
        (
            description.document_version(),
            description.latest_version(),
            description.default_version()
        ),
        (Some("2"), Some("2"), Some("2"))
    );
    let builtin = ssm
        .get_document()
        .name(PREFERENCES)
        .document_version("1")
        .send()
        .await
        .unwrap();
    assert!(builtin.content().unwrap().contains("regional settings"));

    // Sessions start with the new default: its own, and under the inputs of other documents.
    let task = session_task(&ssm, &agent, &mut ctl, None).await;
    assert_eq!(
        task.document_content.inputs["shellProfile"]["linux"],
        "cd /tmp"
    );
    create_port_document(&ssm).await;
    let task = session_task(&ssm, &agent, &mut ctl, Some("Port-8080")).await;
    assert_eq!(task.document_content.inputs["idleSessionTimeout"], "15");

    // Version 1, the built-in preferences, made the default again; it cannot be deleted.
    ssm.update_document_default_version()
        .name(PREFERENCES)
        .document_version("1")
        .send()
        .await
        .unwrap();
    let task = session_task(&ssm, &agent, &mut ctl, None).await;
    assert_eq!(task.document_content.inputs["shellProfile"]["linux"], "");
    for version in [None, Some("1")] {
        let err = ssm
            .delete_document()
            .name(PREFERENCES)
            .set_document_version(version.map(str::to_owned))
            .send()
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), "InvalidDocumentOperation", "{version:?}");
    }
    ssm.delete_document()
        .name(PREFERENCES)
        .document_version("2")
        .send()
        .await
        .unwrap();
    let described = ssm
        .describe_document()
        .name(PREFERENCES)
        .send()
        .await
        .unwrap();
    let document = described.document().unwrap();
    assert_eq!(document.default_version(), Some("1"));
    gateway.shutdown().await;
}
