//! The unmodified official amazon-ssm-agent (3.3.0.0, a source build of 3.3.1142.0) against this
//! gateway, from recordings (`tests/data/official-agent/`, OFFICIAL-AGENT.md): what the agent
//! sent and received when it registered, started, served a shell and ran commands over the
//! control channel and over ec2messages. Their secrets are throwaway and kept, so every recorded
//! signature is verified as recorded; the flows are then replayed against a running gateway with
//! the agent's own requests, re-signed now with its own RSA key and the credentials the gateway
//! issues.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::common::*;
use base64::Engine as _;
use bytes::Bytes;
use futures::SinkExt;
use serde_json::Value;
use ssmx_gateway::sigv4::{rsa_string_to_sign, RequestParts, SigningKey, Verifier};
use ssmx_gateway::Gateway;
use ssmx_protocol::{AgentMessage, MessageType, PayloadType};
use tokio_tungstenite::tungstenite::Message;

/// One recorded conversation.
struct Recording {
    json: Value,
}

/// An HTTP request the agent sent, as recorded.
struct RecordedRequest {
    method: String,
    path_and_query: String,
    /// Lower-case names, as recorded (sorted).
    headers: Vec<(String, String)>,
    body: String,
}

impl Recording {
    fn load(name: &str) -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/official-agent")
            .join(format!("official-agent-{name}.json"));
        let json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        Self { json }
    }

    fn secret(&self, path: &[&str]) -> String {
        let mut v = &self.json["secrets"];
        for key in path {
            v = &v[*key];
        }
        v.as_str()
            .unwrap_or_else(|| panic!("no secret {path:?}"))
            .to_owned()
    }

    fn events(&self) -> impl Iterator<Item = &Value> {
        self.json["events"].as_array().unwrap().iter()
    }

    /// The agent's HTTP requests, in order.
    fn requests(&self) -> Vec<RecordedRequest> {
        self.events()
            .filter(|e| {
                e["channel"] == "rest" && e["direction"] == "agent->gw" && e["ws_opcode"] == "http"
            })
            .map(|e| RecordedRequest::parse(e["text"].as_str().unwrap()))
            .collect()
    }

    /// The first request calling `target` (an `X-Amz-Target`) or, for MGS, with that path prefix.
    fn request(&self, target_or_path: &str) -> RecordedRequest {
        self.requests()
            .into_iter()
            .find(|r| {
                r.header("x-amz-target") == Some(target_or_path)
                    || (r.method == "POST" && r.path_and_query.starts_with(target_or_path))
            })
            .unwrap_or_else(|| panic!("no recorded {target_or_path}"))
    }

    /// Binary frames the agent sent on `channel`, decoded.
    fn agent_frames(&self, channel: &str) -> Vec<AgentMessage> {
        self.events()
            .filter(|e| {
                e["channel"] == channel
                    && e["direction"] == "agent->gw"
                    && e["ws_opcode"] == "binary"
            })
            .map(|e| {
                AgentMessage::decode(Bytes::from(
                    hex::decode(e["hex"].as_str().unwrap()).unwrap(),
                ))
                .unwrap()
            })
            .collect()
    }

    /// The first text frame the agent sent on `channel`.
    fn agent_text(&self, channel: &str) -> Value {
        let e = self
            .events()
            .find(|e| {
                e["channel"] == channel && e["direction"] == "agent->gw" && e["ws_opcode"] == "text"
            })
            .unwrap();
        serde_json::from_str(e["text"].as_str().unwrap()).unwrap()
    }
}

impl RecordedRequest {
    fn parse(text: &str) -> Self {
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let mut lines = head.lines();
        let mut request_line = lines.next().unwrap().split(' ');
        let method = request_line.next().unwrap().to_owned();
        let path_and_query = request_line.next().unwrap().to_owned();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                (k.to_ascii_lowercase(), v.to_owned())
            })
            .collect();
        Self {
            method,
            path_and_query,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Credential=` parts: (key, scope).
    fn credential(&self) -> Option<(String, String)> {
        let auth = self.header("authorization")?;
        let credential = auth.split("Credential=").nth(1)?.split(',').next()?;
        let (key, scope) = credential.split_once('/')?;
        Some((key.to_owned(), scope.to_owned()))
    }

    /// The headers an SDK sets itself again when it re-signs: everything but the signature's
    /// own, the transport's and the body length.
    fn content_headers(&self) -> Vec<(&str, &str)> {
        self.headers
            .iter()
            .filter(|(k, _)| {
                !matches!(
                    k.as_str(),
                    "authorization"
                        | "x-amz-date"
                        | "x-amz-security-token"
                        | "x-amz-content-sha256"
                        | "host"
                        | "content-length"
                        | "accept-encoding"
                        | "user-agent"
                        | "connection"
                        | "upgrade"
                        | "sec-websocket-key"
                        | "sec-websocket-version"
                )
            })
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

#[test]
fn every_recorded_signature_of_the_official_agent_verifies() {
    let verifier = Verifier::new();
    let mut seen = BTreeSet::new();
    for name in [
        "registration",
        "startup",
        "shell",
        "run-command",
        "mds-command",
    ] {
        let rec = Recording::load(name);
        let instance_id = rec.secret(&["instance_id"]);
        let spki = base64::engine::general_purpose::STANDARD
            .decode(rec.secret(&["public_key"]))
            .unwrap();
        // Every credential issued by the time of the recording (none at registration).
        let issued: Vec<(String, String)> = rec.json["secrets"]["role_credentials"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap().to_owned();
                (text("AccessKeyId"), text("SecretAccessKey"))
            })
            .collect();
        for req in rec.requests() {
            let Some((key, scope)) = req.credential() else {
                assert_eq!(
                    req.header("x-amz-target"),
                    Some("AmazonSSM.RegisterManagedInstance"),
                    "only the registration is unsigned"
                );
                continue;
            };
            let mut headers = http::HeaderMap::new();
            for (k, v) in &req.headers {
                headers.append(
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            let signed_at: SystemTime = chrono::NaiveDateTime::parse_from_str(
                req.header("x-amz-date").unwrap(),
                "%Y%m%dT%H%M%SZ",
            )
            .unwrap()
            .and_utc()
            .into();
            let service = scope.split('/').nth(2).unwrap().to_owned();
            let uri: http::Uri = req.path_and_query.parse().unwrap();
            let method: http::Method = req.method.parse().unwrap();
            let parts = RequestParts {
                method: &method,
                uri: &uri,
                headers: &headers,
                body: req.body.as_bytes(),
            };
            let service: &'static str = match service.as_str() {
                "ssm" => "ssm",
                "ec2messages" => "ec2messages",
                "ssmmessages" => "ssmmessages",
                other => panic!("signed for {other}"),
            };
            let rsa = key == instance_id;
            verifier
                .verify(parts, service, "us-east-1", signed_at, false, |k| {
                    if rsa {
                        Some(SigningKey::Rsa(spki.clone()))
                    } else {
                        issued
                            .iter()
                            .find(|(key, _)| key == k)
                            .map(|(_, secret)| SigningKey::Hmac(secret.clone()))
                    }
                })
                .unwrap_or_else(|e| panic!("{name}: {} {}: {e}", req.method, req.path_and_query));
            seen.insert((service, rsa));
        }
    }
    // The RSA-signed token request, and HMAC signatures on all three services.
    for expected in [
        ("ssm", true),
        ("ssm", false),
        ("ec2messages", false),
        ("ssmmessages", false),
    ] {
        assert!(seen.contains(&expected), "no {expected:?} in {seen:?}");
    }
}

/// The official agent as the replays play it: its recorded requests, its RSA key, and the
/// credentials this gateway issued to it.
struct OfficialAgent {
    recorded_instance_id: String,
    instance_id: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    http: reqwest::Client,
}

impl OfficialAgent {
    /// Registers with a new activation as the recorded agent did, then asks for credentials
    /// with its RSA-signed token request (recorded at its first start).
    async fn register(gateway: &Gateway) -> Self {
        let rec = Recording::load("startup");
        let http = reqwest::Client::new();
        let activation = gateway
            .create_activation(&ssmx_gateway::store::NewActivation::default())
            .unwrap();
        let register = Recording::load("registration").request("AmazonSSM.RegisterManagedInstance");
        let mut body: Value = serde_json::from_str(&register.body).unwrap();
        body["ActivationId"] = activation.activation_id.into();
        body["ActivationCode"] = activation.activation_code.into();
        let resp = http
            .post(format!("{}/", gateway.url()))
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "AmazonSSM.RegisterManagedInstance")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let registered: Value = resp.json().await.unwrap();
        let instance_id = registered["InstanceId"].as_str().unwrap().to_owned();
        assert!(instance_id.starts_with("mi-") && instance_id.len() == 20);

        let (status, issued) = rsa_call(
            gateway,
            &http,
            &instance_id,
            &rec.secret(&["private_key"]),
            &rec.request("AmazonSSM.RequestManagedInstanceRoleToken"),
        )
        .await;
        assert_eq!(status, 200, "{issued}");
        assert_eq!(issued["UpdateKeyPair"], false);
        let expires = issued["TokenExpirationDate"].as_f64().unwrap();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((expires - now - 3600.0).abs() < 60.0, "{expires} vs {now}");
        Self {
            recorded_instance_id: rec.secret(&["instance_id"]),
            instance_id,
            access_key_id: issued["AccessKeyId"].as_str().unwrap().to_owned(),
            secret_access_key: issued["SecretAccessKey"].as_str().unwrap().to_owned(),
            session_token: issued["SessionToken"].as_str().unwrap().to_owned(),
            http,
        }
    }

    /// `text` with the recorded instance id replaced by this one's.
    fn own(&self, text: &str) -> String {
        text.replace(&self.recorded_instance_id, &self.instance_id)
    }

    /// Sends a recorded request again (ids made this agent's, `edit` applied to path and body),
    /// signed now for `service` with the issued credentials; returns (status, body).
    async fn replay(
        &self,
        gateway: &Gateway,
        req: &RecordedRequest,
        service: &str,
        edit: impl Fn(String) -> String,
    ) -> (u16, String) {
        self.send(gateway, req, service, edit, true).await
    }

    async fn send(
        &self,
        gateway: &Gateway,
        req: &RecordedRequest,
        service: &str,
        edit: impl Fn(String) -> String,
        with_token: bool,
    ) -> (u16, String) {
        let url = format!("{}{}", gateway.url(), edit(self.own(&req.path_and_query)));
        let body = edit(self.own(&req.body));
        let host = gateway.url().trim_start_matches("http://").to_owned();
        let mut headers = req.content_headers();
        headers.push(("host", &host));
        let signer = Signer {
            service,
            key: &self.access_key_id,
            secret: &self.secret_access_key,
            at: SystemTime::now(),
        };
        let signed = if with_token {
            sign_headers_with_token(
                &req.method,
                &url,
                &headers,
                body.as_bytes(),
                &signer,
                &self.session_token,
            )
        } else {
            sign_headers(&req.method, &url, &headers, body.as_bytes(), &signer)
        };
        let mut out = self.http.post(&url).body(body);
        for (k, v) in req
            .content_headers()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain(signed)
        {
            out = out.header(k, v);
        }
        let resp = out.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// A WebSocket upgrade signed as the agent signs it, with its temporary credentials.
    async fn signed_ws(&self, gateway: &Gateway, path_and_query: &str) -> Ws {
        signed_ws_with_token(
            gateway.url(),
            path_and_query,
            &self.access_key_id,
            &self.secret_access_key,
            Some(&self.session_token),
        )
        .await
    }

    /// Opens the control channel as the recorded agent did: CreateControlChannel, the signed
    /// upgrade, and its OpenControlChannel frame.
    async fn open_control_channel(&self, gateway: &Gateway, rec: &Recording) -> Ws {
        let (status, body) = self
            .replay(
                gateway,
                &rec.request("/v1/control-channel/"),
                "ssmmessages",
                |b| b,
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let token = ssmx_protocol::payload::parse_create_channel_output_xml(&body).unwrap();
        let path = format!(
            "/v1/control-channel/{}?role=subscribe&stream=input",
            self.instance_id
        );
        let mut ws = self.signed_ws(gateway, &path).await;
        let mut open = rec.agent_text("agent-control");
        open["TokenValue"] = token.into();
        ws.send(Message::text(open.to_string())).await.unwrap();
        assert!(gateway.wait_for_agent(&self.instance_id, WAIT).await);
        ws
    }
}

/// A request signed with the instance's RSA key as the official agent signs it (§4.5).
async fn rsa_call(
    gateway: &Gateway,
    http: &reqwest::Client,
    instance_id: &str,
    private_key_b64: &str,
    req: &RecordedRequest,
) -> (u16, Value) {
    let host = gateway.url().trim_start_matches("http://").to_owned();
    let amz_date = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.content_headers() {
        headers.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    headers.insert("host", host.parse().unwrap());
    headers.insert("x-amz-date", amz_date.parse().unwrap());
    let signed_headers = ["content-type", "host", "x-amz-date", "x-amz-target"];
    let scope = format!("{}/{REGION}/ssm/aws4_request", &amz_date[..8]);
    let uri = http::Uri::from_static("/");
    let to_sign = rsa_string_to_sign(
        &RequestParts {
            method: &http::Method::POST,
            uri: &uri,
            headers: &headers,
            body: req.body.as_bytes(),
        },
        &signed_headers,
        &scope,
        &amz_date,
    )
    .unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(private_key_b64)
        .unwrap();
    let key = ring::signature::RsaKeyPair::from_der(&der).unwrap();
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PSS_SHA256,
        &ring::rand::SystemRandom::new(),
        to_sign.as_bytes(),
        &mut signature,
    )
    .unwrap();
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={instance_id}/{scope}, SignedHeaders={}, Signature={}",
        signed_headers.join(";"),
        base64::engine::general_purpose::STANDARD.encode(signature)
    );
    let mut out = http
        .post(format!("{}/", gateway.url()))
        .body(req.body.clone())
        .header("authorization", authorization);
    for (k, v) in headers.iter() {
        if k != "host" {
            out = out.header(k, v);
        }
    }
    let resp = out.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The agent's recorded Run Command frames of `rec`, rewritten for the job `job` this gateway
/// sent (`job_frame` its frame): job id, command id and acknowledged MessageId.
fn answers_to_job(
    rec: &Recording,
    agent: &OfficialAgent,
    job_frame: &AgentMessage,
    job: &ssmx_protocol::command::AgentJob,
) -> Vec<Bytes> {
    let frames = rec.agent_frames("agent-control");
    let recorded_job = frames
        .iter()
        .find(|f| f.message_type == MessageType::AgentJobAck)
        .map(|f| serde_json::from_slice::<Value>(&f.payload).unwrap())
        .unwrap();
    let recorded_job_id = recorded_job["jobId"].as_str().unwrap();
    let recorded_command = ssmx_protocol::command::command_id_of(recorded_job_id).unwrap();
    let command = ssmx_protocol::command::command_id_of(&job.job_id).unwrap();
    let recorded_ack_of = recorded_job["acknowledgedMessageId"].as_str().unwrap();
    frames
        .iter()
        .filter(|f| {
            matches!(
                f.message_type,
                MessageType::AgentJobAck | MessageType::AgentJobReply
            )
        })
        .map(|f| {
            let text = agent
                .own(std::str::from_utf8(&f.payload).unwrap())
                .replace(recorded_command, command)
                .replace(recorded_ack_of, &job_frame.message_id.to_string());
            AgentMessage::new(
                f.message_type.clone(),
                PayloadType::Undefined,
                Bytes::from(text),
            )
            .to_bytes()
        })
        .collect()
}

async fn final_invocation(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    instance_id: &str,
) -> aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let inv = ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
            .unwrap();
        let status = inv
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        if matches!(
            status.as_str(),
            "Success" | "Failed" | "Cancelled" | "TimedOut"
        ) {
            return inv;
        }
        assert!(tokio::time::Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send_recorded_command(ssm: &aws_sdk_ssm::Client, instance_id: &str) -> String {
    ssm.send_command()
        .instance_ids(instance_id)
        .document_name("AWS-RunShellScript")
        .parameters(
            "commands",
            vec!["echo hello".into(), "echo err >&2".into(), "exit 3".into()],
        )
        .send()
        .await
        .unwrap()
        .command()
        .unwrap()
        .command_id()
        .unwrap()
        .to_owned()
}

fn assert_recorded_outcome(
    inv: &aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput,
) {
    assert_eq!(inv.status().unwrap().as_str(), "Failed");
    assert_eq!(inv.response_code(), 3);
    assert_eq!(inv.standard_output_content(), Some("hello\n"));
    assert_eq!(
        inv.standard_error_content(),
        Some("err\nfailed to run commands: exit status 3")
    );
}

#[tokio::test]
async fn an_official_agent_registers_comes_online_and_runs_a_command_over_its_control_channel() {
    let (gateway, cred) = start_gateway("operator", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let startup = Recording::load("startup");
    let agent = OfficialAgent::register(&gateway).await;

    // Health: the liveness probe, then the full report; associations; unknown operations.
    let health: Vec<RecordedRequest> = startup
        .requests()
        .into_iter()
        .filter(|r| r.header("x-amz-target") == Some("AmazonSSM.UpdateInstanceInformation"))
        .collect();
    assert_eq!(health.len(), 2, "the minimal and the full report");
    for report in &health {
        assert_eq!(
            agent.replay(&gateway, report, "ssm", |b| b).await,
            (200, "{}".to_owned())
        );
    }
    let associations = startup.request("AmazonSSM.ListInstanceAssociations");
    assert_eq!(
        agent.replay(&gateway, &associations, "ssm", |b| b).await,
        (200, r#"{"Associations":[]}"#.to_owned())
    );
    let mut inventory = RecordedRequest::parse(&format!(
        "POST / HTTP/1.1\nContent-Type: application/x-amz-json-1.1\nX-Amz-Target: AmazonSSM.PutInventory\n\n{{\"InstanceId\":\"{}\",\"Items\":[]}}",
        agent.recorded_instance_id
    ));
    inventory.body = agent.own(&inventory.body);
    let (status, body) = agent.replay(&gateway, &inventory, "ssm", |b| b).await;
    assert_eq!(status, 400);
    assert!(body.contains("UnknownOperationException"), "{body}");
    // Temporary credentials without their session token are refused.
    let (status, body) = agent
        .send(&gateway, &associations, "ssm", |b| b, false)
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("UnrecognizedClientException"), "{body}");

    // Online, with the platform the agent reported.
    let mut ctl = agent.open_control_channel(&gateway, &startup).await;
    let listed = ssm.describe_instance_information().send().await.unwrap();
    let info = listed
        .instance_information_list()
        .iter()
        .find(|i| i.instance_id() == Some(agent.instance_id.as_str()))
        .unwrap();
    assert_eq!(info.ping_status().unwrap().as_str(), "Online");
    assert_eq!(info.platform_name(), Some("Debian GNU/Linux"));
    assert_eq!(info.agent_version(), Some("3.3.0.0"));
    assert_eq!(info.resource_type().unwrap().as_str(), "ManagedInstance");

    // Run Command over the control channel, answered with the agent's recorded frames
    // (the first reply carries nulls, and the replies are acknowledged one by one).
    let run = Recording::load("run-command");
    let command_id = send_recorded_command(&ssm, &agent.instance_id).await;
    let (job_frame, job) = loop {
        let msg = next_message(&mut ctl).await;
        if msg.message_type == MessageType::AgentJob {
            let job = ssmx_protocol::command::AgentJob::from_payload(&msg.payload).unwrap();
            break (msg, job);
        }
    };
    assert!(job.topic.starts_with("aws.ssm.sendCommand"));
    let answers = answers_to_job(&run, &agent, &job_frame, &job);
    assert_eq!(answers.len(), 4, "an ack and three replies");
    let mut reply_acks = 0;
    for frame in answers {
        let is_reply =
            AgentMessage::decode(frame.clone()).unwrap().message_type == MessageType::AgentJobReply;
        ctl.send(Message::binary(frame)).await.unwrap();
        if is_reply {
            loop {
                let msg = next_message(&mut ctl).await;
                if msg.message_type == MessageType::AgentJobReplyAck {
                    reply_acks += 1;
                    break;
                }
            }
        }
    }
    assert_eq!(reply_acks, 3);
    assert_recorded_outcome(&final_invocation(&ssm, &command_id, &agent.instance_id).await);
}

#[tokio::test]
async fn an_official_agent_without_a_control_channel_runs_a_command_over_ec2messages() {
    let (gateway, cred) = start_gateway("operator", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let mds = Recording::load("mds-command");
    let agent = OfficialAgent::register(&gateway).await;
    let polls: Vec<RecordedRequest> = mds
        .requests()
        .into_iter()
        .filter(|r| {
            r.header("x-amz-target") == Some("EC2WindowsMessageDeliveryService.GetMessages")
        })
        .collect();
    let command_id = send_recorded_command(&ssm, &agent.instance_id).await;

    // The held poll is answered once the job is in the agent's mailbox.
    let (status, body) = agent
        .replay(&gateway, &polls[0], "ec2messages", |b| b)
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let messages = answer["Messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{answer}");
    let message_id = messages[0]["MessageId"].as_str().unwrap().to_owned();
    assert_eq!(
        message_id,
        format!("aws.ssm.{command_id}.{}", agent.instance_id)
    );
    assert!(messages[0]["Topic"]
        .as_str()
        .unwrap()
        .starts_with("aws.ssm.sendCommand"));
    assert_eq!(messages[0]["CreatedDate"].as_str().unwrap().len(), 24);
    let payload: Value = serde_json::from_str(messages[0]["Payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["CommandId"], command_id.as_str());
    assert_eq!(payload["DocumentName"], "AWS-RunShellScript");

    // The agent's replies and acknowledgement, as recorded, for this command.
    let recorded_message = mds
        .events()
        .filter_map(|e| e["text"].as_str())
        .find_map(|t| {
            let start = t.find("\"MessageId\":\"aws.ssm.")? + 13;
            let end = start + t[start..].find('"')?;
            Some(t[start..end].to_owned())
        })
        .unwrap();
    let replies: Vec<RecordedRequest> = mds
        .requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.header("x-amz-target"),
                Some(
                    "EC2WindowsMessageDeliveryService.SendReply"
                        | "EC2WindowsMessageDeliveryService.AcknowledgeMessage"
                )
            )
        })
        .collect();
    assert!(replies.len() >= 4, "SendReply ×3 and AcknowledgeMessage");
    for reply in &replies {
        let (status, body) = agent
            .replay(&gateway, reply, "ec2messages", |b| {
                b.replace(&agent.own(&recorded_message), &message_id)
            })
            .await;
        assert_eq!((status, body.as_str()), (200, "{}"));
    }
    assert_recorded_outcome(&final_invocation(&ssm, &command_id, &agent.instance_id).await);
    // Acknowledged: the next poll has nothing (it is held, so ask for it with a deadline).
    let again = tokio::time::timeout(
        Duration::from_secs(1),
        agent.replay(&gateway, &polls[0], "ec2messages", |b| b),
    )
    .await;
    assert!(
        again.is_err(),
        "an empty poll is held, not answered: {again:?}"
    );

    // A message the agent cannot handle (FailMessage) fails its invocation as undeliverable.
    let refused = send_recorded_command(&ssm, &agent.instance_id).await;
    let (status, body) = agent
        .replay(&gateway, &polls[0], "ec2messages", |b| b)
        .await;
    assert_eq!(status, 200, "{body}");
    let message_id = format!("aws.ssm.{refused}.{}", agent.instance_id);
    assert!(body.contains(&message_id), "{body}");
    let fail = RecordedRequest::parse(&format!(
        "POST / HTTP/1.1\nContent-Type: application/x-amz-json-1.1\nX-Amz-Target: EC2WindowsMessageDeliveryService.FailMessage\n\n{}",
        serde_json::json!({"FailureType": "InternalHandlerException", "MessageId": message_id})
    ));
    assert_eq!(
        agent.replay(&gateway, &fail, "ec2messages", |b| b).await,
        (200, "{}".to_owned())
    );
    let inv = final_invocation(&ssm, &refused, &agent.instance_id).await;
    assert_eq!(
        (inv.status().unwrap().as_str(), inv.status_details()),
        ("Failed", Some("Undeliverable"))
    );
}

#[tokio::test]
async fn an_official_agents_shell_session_reaches_the_client_as_recorded() {
    let (gateway, cred) = start_gateway("operator", None).await;
    let ssm = ssm_client(gateway.url(), &cred);
    let agent = OfficialAgent::register(&gateway).await;
    let mut ctl = agent
        .open_control_channel(&gateway, &Recording::load("startup"))
        .await;
    let shell = Recording::load("shell");
    let create = shell.request("/v1/data-channel/");
    let recorded_session = create.path_and_query.rsplit('/').next().unwrap().to_owned();

    let started = ssm
        .start_session()
        .target(&agent.instance_id)
        .send()
        .await
        .unwrap();
    let session_id = started.session_id().unwrap().to_owned();
    // The session is pushed to the agent once the client's data channel is open.
    let mut client = open_client_data_channel(
        started.stream_url().unwrap(),
        started.token_value().unwrap(),
    )
    .await;
    let push = loop {
        let msg = next_message(&mut ctl).await;
        if msg.message_type == MessageType::InteractiveShell {
            break msg;
        }
    };
    let task =
        ssmx_protocol::payload::AgentTaskPayload::from_message_payload(&push.payload).unwrap();
    assert_eq!(task.session_id, session_id);

    // The agent's data channel, opened as recorded.
    let own_session = |text: &str| agent.own(text).replace(&recorded_session, &session_id);
    let (status, body) = agent
        .replay(&gateway, &create, "ssmmessages", |b| {
            b.replace(&recorded_session, &session_id)
        })
        .await;
    assert_eq!(status, 201, "{body}");
    let token = ssmx_protocol::payload::parse_create_channel_output_xml(&body).unwrap();
    let mut data = agent
        .signed_ws(
            &gateway,
            &format!("/v1/data-channel/{session_id}?role=publish_subscribe"),
        )
        .await;
    let mut open = shell.agent_text("agent-data");
    open["TokenValue"] = token.into();
    data.send(Message::text(own_session(&open.to_string())))
        .await
        .unwrap();

    // Every frame the agent sent reaches the client byte for byte, but agent_session_state,
    // which the service consumes.
    let mut expected = Vec::new();
    for frame in shell.agent_frames("agent-data") {
        let bytes = if frame.message_type == MessageType::AgentSessionState {
            let payload = own_session(std::str::from_utf8(&frame.payload).unwrap());
            AgentMessage::new(
                frame.message_type.clone(),
                frame.payload_type,
                Bytes::from(payload),
            )
            .to_bytes()
        } else {
            let bytes = frame.to_bytes();
            expected.push(bytes.clone());
            bytes
        };
        data.send(Message::binary(bytes)).await.unwrap();
    }
    for want in &expected {
        assert_eq!(&next_binary(&mut client).await, want);
    }

    // The agent's agent_task_complete is acknowledged on the control channel.
    let complete = shell
        .agent_frames("agent-control")
        .into_iter()
        .find(|f| f.message_type == MessageType::AgentTaskComplete)
        .unwrap();
    let payload = own_session(std::str::from_utf8(&complete.payload).unwrap());
    let complete = AgentMessage::new(
        MessageType::AgentTaskComplete,
        complete.payload_type,
        Bytes::from(payload),
    );
    ctl.send(Message::binary(complete.to_bytes()))
        .await
        .unwrap();
    loop {
        let msg = next_message(&mut ctl).await;
        if msg.message_type == MessageType::AgentTaskAcknowledge {
            let ack: Value = serde_json::from_slice(&msg.payload).unwrap();
            assert_eq!(ack["MessageId"], complete.message_id.to_string());
            assert_eq!(ack["TaskId"], session_id.as_str());
            break;
        }
    }
}

#[tokio::test]
async fn an_official_agent_rotates_its_key_and_the_old_one_stops_working() {
    let (gateway, _cred) = start_gateway("operator", None).await;
    let agent = OfficialAgent::register(&gateway).await;
    let startup = Recording::load("startup");
    let old_key = startup.secret(&["private_key"]);
    let token_request = startup.request("AmazonSSM.RequestManagedInstanceRoleToken");
    // A throwaway key of the tests as the new one (PKCS#1 and its SubjectPublicKeyInfo).
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let b64 = |file: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(file)).unwrap())
    };
    let new_key = b64("test-instance-key.der");
    let rotate = RecordedRequest::parse(&format!(
        "POST / HTTP/1.1\nContent-Type: application/x-amz-json-1.1\nX-Amz-Target: AmazonSSM.UpdateManagedInstancePublicKey\n\n{}",
        serde_json::json!({"NewPublicKey": b64("test-instance-key.spki"), "NewPublicKeyType": "Rsa"})
    ));
    let http = reqwest::Client::new();
    let (status, body) = rsa_call(&gateway, &http, &agent.instance_id, &old_key, &rotate).await;
    assert_eq!((status, body), (200, serde_json::json!({})));
    let (status, body) = rsa_call(
        &gateway,
        &http,
        &agent.instance_id,
        &new_key,
        &token_request,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rsa_call(
        &gateway,
        &http,
        &agent.instance_id,
        &old_key,
        &token_request,
    )
    .await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("InvalidSignatureException"))
    );
    // Another machine's fingerprint gets the code the agent acts on.
    let other = RecordedRequest::parse(&format!(
        "POST / HTTP/1.1\nContent-Type: application/x-amz-json-1.1\nX-Amz-Target: AmazonSSM.RequestManagedInstanceRoleToken\n\n{}",
        serde_json::json!({"Fingerprint": "00000000-0000-4000-8000-000000000000"})
    ));
    let (status, body) = rsa_call(&gateway, &http, &agent.instance_id, &new_key, &other).await;
    assert_eq!(
        (status, body["__type"].as_str()),
        (400, Some("MachineFingerprintDoesNotMatch"))
    );
}
