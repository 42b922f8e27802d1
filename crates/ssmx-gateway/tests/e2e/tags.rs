//! Tags through aws-sdk-ssm against a real gateway: added, replaced, listed and removed on
//! managed instances, refused with AWS's errors where they do not fit, and SendCommand's
//! `tag:<name>` and `tag-key` targets (and DescribeInstanceInformation's tag filters) resolved
//! from them.

use crate::common::*;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{CommandStatus, ResourceTypeForTagging, Tag, Target};

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build().unwrap()
}

fn target(key: &str, values: &[&str]) -> Target {
    Target::builder()
        .key(key)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

async fn add_tags(ssm: &aws_sdk_ssm::Client, instance_id: &str, tags: Vec<Tag>) {
    ssm.add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(instance_id)
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
}

async fn tags_of(ssm: &aws_sdk_ssm::Client, instance_id: &str) -> Vec<(String, String)> {
    ssm.list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(instance_id)
        .send()
        .await
        .unwrap()
        .tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect()
}

/// The instances a SendCommand to `targets` went to, sorted, and the command's status.
async fn send_to(
    ssm: &aws_sdk_ssm::Client,
    targets: Vec<Target>,
) -> (Vec<String>, Option<CommandStatus>, Option<String>) {
    let command = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .set_targets(Some(targets))
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .unwrap()
        .command
        .unwrap();
    let mut ids: Vec<String> = ssm
        .list_command_invocations()
        .command_id(command.command_id().unwrap())
        .send()
        .await
        .unwrap()
        .command_invocations()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_owned))
        .collect();
    ids.sort();
    (
        ids,
        command.status().cloned(),
        command.status_details().map(str::to_owned),
    )
}

#[tokio::test]
async fn instance_tags_are_kept_listed_and_removed() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let id = agent.instance_id.as_str();
    add_tags(&ssm, id, vec![tag("Env", "dev"), tag("Role", "web")]).await;
    add_tags(&ssm, id, vec![tag("Env", "prod")]).await;
    assert_eq!(
        tags_of(&ssm, id).await,
        [("Env".into(), "prod".into()), ("Role".into(), "web".into())]
    );
    ssm.remove_tags_from_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(id)
        .tag_keys("Role")
        .tag_keys("NotThere")
        .send()
        .await
        .unwrap();
    assert_eq!(tags_of(&ssm, id).await, [("Env".into(), "prod".into())]);

    let refused = |e: aws_sdk_ssm::error::SdkError<_, _>| -> String {
        let e: &dyn ProvideErrorMetadata = &e;
        e.code().unwrap_or_default().to_owned()
    };
    let err = ssm
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id("mi-00000000000000000")
        .tags(tag("Env", "prod"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused(err), "InvalidResourceId");
    let err = ssm
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::Parameter)
        .resource_id(id)
        .tags(tag("Env", "prod"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused(err), "InvalidResourceType");
    let err = ssm
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(id)
        .set_tags(Some((0..51).map(|i| tag(&format!("k{i}"), "v")).collect()))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused(err), "TooManyTagsError");
    let err = ssm
        .add_tags_to_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(id)
        .tags(tag("aws:reserved", "v"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(refused(err), "ValidationException");
    assert_eq!(tags_of(&ssm, id).await, [("Env".into(), "prod".into())]);
    gateway.shutdown().await;
}

#[tokio::test]
async fn send_command_targets_instances_by_tag() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let web = register_agent(&gateway).await.instance_id;
    let db = register_agent(&gateway).await.instance_id;
    let dev = register_agent(&gateway).await.instance_id;
    add_tags(&ssm, &web, vec![tag("Env", "prod"), tag("Role", "web")]).await;
    add_tags(&ssm, &db, vec![tag("Env", "prod"), tag("Backup", "")]).await;
    add_tags(&ssm, &dev, vec![tag("Env", "dev"), tag("Role", "web")]).await;
    let sorted = |mut v: Vec<&String>| {
        v.sort();
        v.into_iter().cloned().collect::<Vec<_>>()
    };

    let (ids, _, _) = send_to(&ssm, vec![target("tag:Env", &["prod"])]).await;
    assert_eq!(ids, sorted(vec![&web, &db]));
    // Values of one target are alternatives; several targets must all match.
    let (ids, _, _) = send_to(&ssm, vec![target("tag:Env", &["prod", "dev"])]).await;
    assert_eq!(ids, sorted(vec![&web, &db, &dev]));
    let (ids, _, _) = send_to(
        &ssm,
        vec![target("tag:Env", &["prod"]), target("tag:Role", &["web"])],
    )
    .await;
    assert_eq!(ids, [web.as_str()]);
    let (ids, _, _) = send_to(&ssm, vec![target("tag-key", &["Backup"])]).await;
    assert_eq!(ids, [db.as_str()]);
    let (ids, _, _) = send_to(
        &ssm,
        vec![target("tag-key", &["Role"]), target("InstanceIds", &[&dev])],
    )
    .await;
    assert_eq!(ids, [dev.as_str()]);

    // No match is the service's answer: a failed command with no targets, not a success.
    let (ids, status, details) = send_to(&ssm, vec![target("tag:Env", &["staging"])]).await;
    assert!(ids.is_empty());
    assert_eq!(status, Some(CommandStatus::Failed));
    assert_eq!(details.as_deref(), Some("NoInstancesInTag"));

    // DescribeInstanceInformation filters by the same rules.
    let listed = ssm
        .describe_instance_information()
        .filters(
            aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
                .key("tag:Env")
                .values("prod")
                .build()
                .unwrap(),
        )
        .filters(
            aws_sdk_ssm::types::InstanceInformationStringFilter::builder()
                .key("tag-key")
                .values("Role")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let listed: Vec<&str> = listed
        .instance_information_list()
        .iter()
        .filter_map(|i| i.instance_id())
        .collect();
    assert_eq!(listed, [web.as_str()]);

    let err = ssm
        .send_command()
        .document_name("AWS-RunShellScript")
        .targets(target("resource-groups:Name", &["g"]))
        .parameters("commands", vec!["true".into()])
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    gateway.shutdown().await;
}
