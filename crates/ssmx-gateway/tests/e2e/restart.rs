//! Restart recovery with a file database: sessions a crashed gateway left active are recorded as
//! failed, registrations and credentials survive, agents reconnect.

use crate::common::*;
use ssmx_gateway::config::Database;

#[test]
fn sessions_left_active_are_failed_and_agents_reconnect() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::File(dir.path().join("gateway.db"));

    let crashed = tokio::runtime::Runtime::new().unwrap();
    let (session_id, agent, user) = crashed.block_on(async {
        let (gateway, cred) = start_gateway_with("alice", None, db.clone()).await;
        let ssm = ssm_client(gateway.url(), &cred);
        let agent = register_agent(&gateway).await;
        let mut ctl = open_control_channel(&gateway, &agent).await;
        let w = start_wired_session(&gateway, &ssm, &agent, &mut ctl, None).await;
        // Simulate a crash: the gateway never gets to shut down cleanly.
        std::mem::forget((gateway, ctl, w.client, w.agent));
        (w.session_id, agent, cred)
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
        let record = gateway.store().session(&session_id).unwrap().unwrap();
        assert_eq!(record.status, "Failed");
        assert!(
            record.details.contains("gateway stopped"),
            "{}",
            record.details
        );
        assert!(record.end_date.is_some());

        // The agent's credential survived the restart: it reconnects and is Online again.
        let _ctl = open_control_channel(&gateway, &agent).await;
        let ssm = ssm_client(gateway.url(), &user);
        let history = ssm
            .describe_sessions()
            .state(aws_sdk_ssm::types::SessionState::History)
            .send()
            .await
            .unwrap();
        assert_eq!(
            history.sessions()[0].session_id(),
            Some(session_id.as_str())
        );
        let active = ssm
            .describe_sessions()
            .state(aws_sdk_ssm::types::SessionState::Active)
            .send()
            .await
            .unwrap();
        assert!(active.sessions().is_empty());
        let trail = gateway.store().audit_trail(Some(&session_id)).unwrap();
        assert_eq!(trail.last().unwrap().action, "SessionEnded");
        gateway.shutdown().await;
    });
}
