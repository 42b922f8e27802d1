//! SSM API conformance with the official Rust SDK (aws-sdk-ssm) against an in-process gateway.

use crate::common::*;
use aws_sdk_ssm::error::ProvideErrorMetadata;
use aws_sdk_ssm::types::{
    InstanceInformationStringFilter, PingStatus, SessionFilter, SessionFilterKey, SessionState,
};
use ssmx_gateway::config::ApiCredential;

#[tokio::test]
async fn start_session_errors_are_modelled() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);

    let err = ssm
        .start_session()
        .target("mi-00000000000000000")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_target_not_connected(), "{err:?}");
    assert_eq!(
        err.message(),
        Some("mi-00000000000000000 is not connected.")
    );

    // Registered but without a control channel: still not connected.
    let agent = register_agent(&gateway).await;
    let err = ssm
        .start_session()
        .target(&agent.instance_id)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_target_not_connected(), "{err:?}");

    let _ctl = open_control_channel(&gateway, &agent).await;
    let err = ssm
        .start_session()
        .target(&agent.instance_id)
        .document_name("No-Such-Document")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_document(), "{err:?}");

    let err = ssm
        .start_session()
        .target(&agent.instance_id)
        .document_name("AWS-StartPortForwardingSession")
        .parameters("portNumber", vec!["99999".into()])
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_invalid_document(), "{err:?}");
    assert!(err.message().unwrap().contains("portNumber"));

    let err = ssm
        .start_session()
        .target(&agent.instance_id)
        .document_name("AWS-StartInteractiveCommand")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.message().unwrap().contains("command"), "{err:?}");

    let ok = ssm
        .start_session()
        .target(&agent.instance_id)
        .document_name("AWS-StartSSHSession")
        .parameters("portNumber", vec!["2222".into()])
        .reason("maintenance")
        .send()
        .await
        .unwrap();
    assert!(ok.session_id().unwrap().starts_with("alice-"));
    assert!(ok.token_value().unwrap().len() >= 43);
    gateway.shutdown().await;
}

#[tokio::test]
async fn describe_resume_and_terminate() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let _ctl = open_control_channel(&gateway, &agent).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let out = ssm
            .start_session()
            .target(&agent.instance_id)
            .reason(format!("session {n}"))
            .send()
            .await
            .unwrap();
        ids.push(out.session_id().unwrap().to_owned());
    }

    let page = ssm
        .describe_sessions()
        .state(SessionState::Active)
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(page.sessions().len(), 2);
    let next = page.next_token().unwrap().to_owned();
    let rest = ssm
        .describe_sessions()
        .state(SessionState::Active)
        .max_results(2)
        .next_token(next)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.sessions().len(), 1);
    assert!(rest.next_token().is_none());

    let by_id = ssm
        .describe_sessions()
        .state(SessionState::Active)
        .filters(
            SessionFilter::builder()
                .key(SessionFilterKey::SessionId)
                .value(&ids[1])
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_id.sessions().len(), 1);
    let s = &by_id.sessions()[0];
    assert_eq!(s.target(), Some(agent.instance_id.as_str()));
    assert_eq!(s.reason(), Some("session 1"));
    assert_eq!(s.owner(), Some("arn:aws:iam::000000000000:user/alice"));
    assert_eq!(s.document_name(), Some("SSM-SessionManagerRunShell"));

    let bad_filter = ssm
        .describe_sessions()
        .state(SessionState::Active)
        .filters(
            SessionFilter::builder()
                .key(SessionFilterKey::from("Color"))
                .value("red")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(bad_filter.is_invalid_filter_key(), "{bad_filter:?}");
    let bad_token = ssm
        .describe_sessions()
        .state(SessionState::History)
        .next_token("not-a-token")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(bad_token.is_invalid_next_token(), "{bad_token:?}");

    let resumed = ssm
        .resume_session()
        .session_id(&ids[0])
        .send()
        .await
        .unwrap();
    assert!(resumed.token_value().is_some());
    ssm.terminate_session()
        .session_id(&ids[0])
        .send()
        .await
        .unwrap();
    // Terminating again is fine; resuming an ended session yields no token.
    ssm.terminate_session()
        .session_id(&ids[0])
        .send()
        .await
        .unwrap();
    // (Signed a second earlier than the first ResumeSession: an identical signature would be
    // refused as a replay.)
    let (status, ended) = signed_api_call(
        gateway.url(),
        "ResumeSession",
        &serde_json::json!({"SessionId": ids[0]}).to_string(),
        &cred.access_key_id,
        &cred.secret_access_key,
        std::time::SystemTime::now() - std::time::Duration::from_secs(2),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(ended, serde_json::json!({"SessionId": ids[0]}));
    let missing = ssm
        .resume_session()
        .session_id("alice-0000")
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(missing.is_does_not_exist_exception(), "{missing:?}");

    let history = ssm
        .describe_sessions()
        .state(SessionState::History)
        .send()
        .await
        .unwrap();
    assert_eq!(history.sessions().len(), 1);
    assert_eq!(history.sessions()[0].session_id(), Some(ids[0].as_str()));

    gateway.shutdown().await;
}

#[tokio::test]
async fn other_users_cannot_resume_or_terminate() {
    let alice = ApiCredential::generate("alice");
    let mallory = ApiCredential::generate("mallory");
    let gateway = ssmx_gateway::Gateway::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .database(ssmx_gateway::config::Database::Memory)
        .credential(alice.clone())
        .credential(mallory.clone())
        .without_recording()
        .start()
        .await
        .unwrap();
    let agent = register_agent(&gateway).await;
    let _ctl = open_control_channel(&gateway, &agent).await;
    let ssm = ssm_client(gateway.url(), &alice);
    let intruder = ssm_client(gateway.url(), &mallory);
    let id = ssm
        .start_session()
        .target(&agent.instance_id)
        .send()
        .await
        .unwrap()
        .session_id()
        .unwrap()
        .to_owned();
    let err = intruder
        .resume_session()
        .session_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let err = intruder
        .terminate_session()
        .session_id(&id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("AccessDeniedException"));
    let mine = intruder
        .describe_sessions()
        .state(SessionState::Active)
        .filters(
            SessionFilter::builder()
                .key(SessionFilterKey::Owner)
                .value("mallory")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert!(mine.sessions().is_empty());
    for owner in ["alice", "arn:aws:iam::000000000000:user/alice"] {
        let hers = intruder
            .describe_sessions()
            .state(SessionState::Active)
            .filters(
                SessionFilter::builder()
                    .key(SessionFilterKey::Owner)
                    .value(owner)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(hers.sessions().len(), 1, "{owner}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn instances_activations_and_agent_reports() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);

    let activation = ssm
        .create_activation()
        .iam_role("SSMServiceRole")
        .default_instance_name("web")
        .registration_limit(1)
        .send()
        .await
        .unwrap();
    let reg = |code: String| {
        let url = format!("{}/ssmx/v1/register", gateway.url());
        let id = activation.activation_id().unwrap().to_owned();
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({"ActivationId": id, "ActivationCode": code, "Hostname": "h", "PlatformType": "linux"}))
                .send()
                .await
                .unwrap();
            (
                resp.status().as_u16(),
                resp.json::<serde_json::Value>().await.unwrap(),
            )
        }
    };
    let (status, body) = reg("wrong-code".into()).await;
    assert_eq!(status, 400);
    assert_eq!(body["__type"], "InvalidActivation");
    let (status, body) = reg(activation.activation_code().unwrap().into()).await;
    assert_eq!(status, 200, "{body}");
    let instance_id = body["InstanceId"].as_str().unwrap().to_owned();
    assert!(instance_id.starts_with("mi-") && instance_id.len() == 20);
    let (status, body) = reg(activation.activation_code().unwrap().into()).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("InvalidActivation"))
    );

    let listed = ssm.describe_instance_information().send().await.unwrap();
    let info = &listed.instance_information_list()[0];
    assert_eq!(info.instance_id(), Some(instance_id.as_str()));
    assert_eq!(info.name(), Some("web"));
    assert_eq!(info.iam_role(), Some("SSMServiceRole"));
    assert_eq!(info.activation_id(), activation.activation_id());
    assert_eq!(info.ping_status(), Some(&PingStatus::ConnectionLost));
    gateway.shutdown().await;
}

#[tokio::test]
async fn agent_credentials_update_their_instance_only() {
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = register_agent(&gateway).await;
    let agent_ssm = ssm_client(
        gateway.url(),
        &ApiCredential::new(&agent.access_key_id, &agent.secret_access_key, "agent"),
    );
    let update = |instance: &str| {
        serde_json::json!({
            "AgentName": "amazon-ssm-agent", "AgentStatus": "Active", "AgentVersion": "3.3.2000.0",
            "ComputerName": "web-1", "IPAddress": "10.0.0.7", "InstanceId": instance,
            "PlatformName": "Debian GNU/Linux", "PlatformType": "Linux", "PlatformVersion": "12",
        })
        .to_string()
    };
    let now = std::time::SystemTime::now();
    let (status, body) = signed_api_call(
        gateway.url(),
        "UpdateInstanceInformation",
        &update(&agent.instance_id),
        &agent.access_key_id,
        &agent.secret_access_key,
        now,
    )
    .await;
    assert_eq!((status, body), (200, serde_json::json!({})));
    let (status, body) = signed_api_call(
        gateway.url(),
        "UpdateInstanceInformation",
        &update("mi-00000000000000000"),
        &agent.access_key_id,
        &agent.secret_access_key,
        now,
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );
    let (status, body) = signed_api_call(
        gateway.url(),
        "UpdateInstanceInformation",
        &update(&agent.instance_id),
        &cred.access_key_id,
        &cred.secret_access_key,
        now,
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("AccessDeniedException"))
    );
    let denied = agent_ssm
        .start_session()
        .target(&agent.instance_id)
        .send()
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Some("AccessDeniedException"));

    let mut ctl = open_control_channel(&gateway, &agent).await;
    let listed = ssm.describe_instance_information().send().await.unwrap();
    let info = &listed.instance_information_list()[0];
    assert_eq!(info.instance_id(), Some(agent.instance_id.as_str()));
    assert_eq!(info.ping_status(), Some(&PingStatus::Online));
    assert_eq!(info.computer_name(), Some("web-1"));
    assert_eq!(info.ip_address(), Some("10.0.0.7"));
    assert_eq!(info.agent_version(), Some("3.3.2000.0"));
    assert_eq!(
        info.platform_type(),
        Some(&aws_sdk_ssm::types::PlatformType::Linux)
    );

    ctl.ws.close(None).await.unwrap();
    let mut offline = false;
    for _ in 0..100 {
        if !gateway.is_agent_online(&agent.instance_id) {
            offline = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(offline);
    // A node whose control channel just closed stays Online for the connection-lost period (ten
    // minutes by default; the flip to ConnectionLost is tested with a short one end to end).
    let online = ssm
        .describe_instance_information()
        .filters(
            InstanceInformationStringFilter::builder()
                .key("PingStatus")
                .values("Online")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let info = &online.instance_information_list()[0];
    assert_eq!(info.instance_id(), Some(agent.instance_id.as_str()));
    assert!(info.last_ping_date_time().is_some());
    gateway.shutdown().await;
}

#[tokio::test]
async fn refusals_of_the_http_layer_are_aws_shaped() {
    let (gateway, _cred) = start_gateway("shape", None).await;
    let http = reqwest::Client::new();
    // One byte over the SSM API's 1 MiB body limit.
    let too_big = vec![b' '; 1024 * 1024 + 1];
    let resp = http
        .post(format!("{}/", gateway.url()))
        .header("x-amz-target", "AmazonSSM.DescribeSessions")
        .header("content-type", "application/x-amz-json-1.1")
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["__type"], "RequestEntityTooLargeException");
    assert!(
        body["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );

    for resp in [
        http.get(format!("{}/", gateway.url()))
            .send()
            .await
            .unwrap(),
        http.get(format!("{}/no/such/path", gateway.url()))
            .send()
            .await
            .unwrap(),
        // A data-channel GET that is no WebSocket upgrade.
        http.get(format!("{}/v1/data-channel/s-1", gateway.url()))
            .send()
            .await
            .unwrap(),
    ] {
        let status = resp.status();
        assert!(status.is_client_error(), "{status}");
        let body: serde_json::Value = resp.json().await.expect("a JSON error body");
        assert!(
            body["__type"].as_str().is_some_and(|t| !t.is_empty()),
            "{body}"
        );
        assert!(body["message"].as_str().is_some(), "{body}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id_as_aws_answers_do() {
    use aws_sdk_ssm::operation::RequestId as _;
    let (gateway, cred) = start_gateway("alice", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let listed = ssm
        .describe_sessions()
        .state(SessionState::Active)
        .send()
        .await
        .unwrap();
    let first = listed.request_id().expect("a request id").to_owned();
    assert_eq!(uuid::Uuid::parse_str(&first).unwrap().get_version_num(), 4);
    let refused = ssm
        .terminate_session()
        .session_id("alice-00000000000000000")
        .send()
        .await
        .unwrap_err();
    let again = refused.request_id().expect("errors carry one too");
    assert_ne!(again, first);
    // Answers the HTTP layer makes by itself carry one as well.
    let resp = reqwest::Client::new()
        .get(format!("{}/no/such/path", gateway.url()))
        .send()
        .await
        .unwrap();
    assert!(resp.headers().contains_key("x-amzn-requestid"));
}
