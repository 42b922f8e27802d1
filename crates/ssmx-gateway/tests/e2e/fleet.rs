//! The fleet's life cycle through aws-sdk-ssm against a real gateway: connection status,
//! activations listed and deleted (they register nothing more), and a deregistered instance cut
//! off at once (its control channel closed, its credential refused); agents too old or with a
//! clock far off shown as such.

use crate::common::*;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{
    ConnectionStatus, DescribeActivationsFilter, DescribeActivationsFilterKeys,
};
use ssmx_gateway::config::ApiCredential;
use ssmx_gateway::store::NewActivation;
use std::time::{Duration, SystemTime};

async fn connection_status(ssm: &aws_sdk_ssm::Client, target: &str) -> ConnectionStatus {
    ssm.get_connection_status()
        .target(target)
        .send()
        .await
        .unwrap()
        .status
        .unwrap()
}

#[tokio::test]
async fn a_deregistered_instance_is_cut_off_at_once() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let id = agent.instance_id.as_str();
    assert_eq!(
        connection_status(&ssm, id).await,
        ConnectionStatus::NotConnected
    );
    let mut ctl = open_control_channel(&gateway, &agent).await;
    assert_eq!(
        connection_status(&ssm, id).await,
        ConnectionStatus::Connected
    );

    ssm.deregister_managed_instance()
        .instance_id(id)
        .send()
        .await
        .unwrap();
    drain_until_closed(&mut ctl.ws).await;
    assert_eq!(
        connection_status(&ssm, id).await,
        ConnectionStatus::NotConnected
    );
    let path = format!("/v1/control-channel/{id}");
    let (status, body) = agent
        .mgs_post(gateway.url(), &path, r#"{"MessageSchemaVersion":"1.0"}"#)
        .await;
    assert!(
        (400..500).contains(&status),
        "the old credential still works: {status} {body}"
    );
    let listed = ssm.describe_instance_information().send().await.unwrap();
    assert!(listed.instance_information_list().is_empty());
    let err = ssm
        .deregister_managed_instance()
        .instance_id(id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidInstanceId"));
    gateway.shutdown().await;
}

#[tokio::test]
async fn activations_are_listed_and_a_deleted_one_registers_nothing() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let kept = ssm
        .create_activation()
        .iam_role("ssm-role")
        .default_instance_name("web")
        .registration_limit(2)
        .send()
        .await
        .unwrap();
    let doomed = gateway
        .create_activation(&NewActivation::default())
        .unwrap();
    let all = ssm.describe_activations().send().await.unwrap();
    assert_eq!(all.activation_list().len(), 2);
    let filtered = ssm
        .describe_activations()
        .filters(
            DescribeActivationsFilter::builder()
                .filter_key(DescribeActivationsFilterKeys::DefaultInstanceName)
                .filter_values("web")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let only = &filtered.activation_list()[0];
    assert_eq!(filtered.activation_list().len(), 1);
    assert_eq!(only.activation_id(), kept.activation_id());
    assert_eq!(only.iam_role(), Some("ssm-role"));
    assert_eq!(only.registration_limit(), Some(2));
    assert_eq!(only.registrations_count(), Some(0));
    assert!(!only.expired());

    ssm.delete_activation()
        .activation_id(&doomed.activation_id)
        .send()
        .await
        .unwrap();
    let all = ssm.describe_activations().send().await.unwrap();
    assert_eq!(all.activation_list().len(), 1);
    let refused = reqwest::Client::new()
        .post(format!("{}/ssmx/v1/register", gateway.url()))
        .json(&serde_json::json!({
            "ActivationId": doomed.activation_id,
            "ActivationCode": doomed.activation_code,
            "Hostname": "late-host",
            "PlatformType": "linux",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let err = ssm
        .delete_activation()
        .activation_id(&doomed.activation_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("InvalidActivationId"));
    gateway.shutdown().await;
}

/// The agent's UpdateInstanceInformation, signed as if its clock read `at`.
async fn report(
    gateway: &ssmx_gateway::Gateway,
    agent: &AgentCredential,
    version: &str,
    at: SystemTime,
) -> (u16, serde_json::Value) {
    let body = serde_json::json!({
        "AgentName": "amazon-ssm-agent", "AgentStatus": "Active", "AgentVersion": version,
        "ComputerName": "web-1", "IPAddress": "10.0.0.7", "InstanceId": agent.instance_id,
        "PlatformName": "Debian GNU/Linux", "PlatformType": "Linux", "PlatformVersion": "12",
    });
    signed_api_call(
        gateway.url(),
        "UpdateInstanceInformation",
        &body.to_string(),
        &agent.access_key_id,
        &agent.secret_access_key,
        at,
    )
    .await
}

/// DescribeInstanceInformation's item for `instance_id`, as raw JSON (with the ssmx additions).
async fn raw_instance(
    gateway: &ssmx_gateway::Gateway,
    cred: &ApiCredential,
    instance_id: &str,
) -> serde_json::Value {
    let (status, body) = signed_api_call(
        gateway.url(),
        "DescribeInstanceInformation",
        "{}",
        &cred.access_key_id,
        &cred.secret_access_key,
        SystemTime::now(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["InstanceInformationList"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["InstanceId"] == instance_id)
        .cloned()
        .expect("the instance is listed")
}

#[tokio::test]
async fn old_agents_and_skewed_clocks_are_visible() {
    let (gateway, cred) = start_gateway("ops", None).await;
    let agent = register_agent(&gateway).await;
    let id = agent.instance_id.as_str();

    let (status, body) = report(
        &gateway,
        &agent,
        "3.1.1000.0",
        SystemTime::now() + Duration::from_secs(120),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let item = raw_instance(&gateway, &cred, id).await;
    assert_eq!(item["IsLatestVersion"], false, "{item}");
    let skew = item["ClockSkewSeconds"].as_i64().unwrap();
    assert!((119..=120).contains(&skew), "{item}");

    // A clock outside the signature window is refused, and the node shows by how much.
    let (status, body) = report(
        &gateway,
        &agent,
        "3.3.2000.0",
        SystemTime::now() - Duration::from_secs(20 * 60),
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("InvalidSignatureException")),
        "{body}"
    );
    let item = raw_instance(&gateway, &cred, id).await;
    let skew = item["ClockSkewSeconds"].as_i64().unwrap();
    assert!((-1201..=-1199).contains(&skew), "{item}");
    assert_eq!(
        item["AgentVersion"], "3.1.1000.0",
        "the refused report changed nothing"
    );

    // A forged request with the node's key id but a wrong secret says nothing about its clock.
    let forged = AgentCredential {
        instance_id: agent.instance_id.clone(),
        access_key_id: agent.access_key_id.clone(),
        secret_access_key: "not-the-secret".into(),
    };
    let (status, _) = report(
        &gateway,
        &forged,
        "3.3.2000.0",
        SystemTime::now() + Duration::from_secs(3600),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        raw_instance(&gateway, &cred, id).await["ClockSkewSeconds"],
        item["ClockSkewSeconds"]
    );

    let (status, body) = report(&gateway, &agent, "3.3.2000.0", SystemTime::now()).await;
    assert_eq!(status, 200, "{body}");
    let item = raw_instance(&gateway, &cred, id).await;
    assert_eq!(item["IsLatestVersion"], true, "{item}");
    assert!(
        item["ClockSkewSeconds"].as_i64().unwrap().abs() <= 1,
        "{item}"
    );
    gateway.shutdown().await;
}
