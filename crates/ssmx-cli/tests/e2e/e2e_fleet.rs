//! The fleet view end to end: unmodified aws-cli and boto3, and `ssmx instances` / `ssmx gateway
//! activation|instance`, against a real gateway with real agents and registered identities whose
//! agents do not run.

use std::process::Output;

use crate::common::{wait_for, Stack};
use serde_json::Value;

fn ssmx(stack: &Stack, args: &[&str]) -> Output {
    let out = stack.ssmx().args(args).output().unwrap();
    stack.assert_exit(&out, 0);
    out
}

fn ssmx_json(stack: &Stack, args: &[&str]) -> Value {
    serde_json::from_slice(&ssmx(stack, args).stdout).expect("ssmx JSON")
}

/// The instance ids of a DescribeInstanceInformation answer or an `ssmx instances --json` list.
fn ids(items: &Value) -> Vec<String> {
    let mut ids: Vec<String> = items
        .as_array()
        .expect("a list of instances")
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

#[test]
fn fleet_health_tags_and_pages_through_aws_cli_boto3_and_ssmx_instances() {
    let mut stack = Stack::start_with(&[], "connection_lost_after_seconds = 2");
    let web = stack.instance_id.clone();
    let db = stack.add_agent();
    // Registered nodes whose agents never ran: listed, never dropped, ConnectionLost.
    let idle: Vec<String> = (0..5)
        .map(|n| stack.register_agent(&format!("idle{n}")))
        .collect();

    stack.aws_json(&[
        "ssm",
        "add-tags-to-resource",
        "--resource-type",
        "ManagedInstance",
        "--resource-id",
        &web,
        "--tags",
        "Key=env,Value=prod",
        "Key=role,Value=web",
    ]);
    stack.run_boto3_with(
        r#"
import sys, boto3
url, region, _ = sys.argv[1:4]
db = sys.argv[4]
ssm = boto3.client("ssm", endpoint_url=url, region_name=region)
ssm.add_tags_to_resource(ResourceType="ManagedInstance", ResourceId=db,
                         Tags=[{"Key": "env", "Value": "prod"}, {"Key": "role", "Value": "db"}])
tags = ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=db)["TagList"]
assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "prod"), ("role", "db")], tags
found = ssm.describe_instance_information(Filters=[{"Key": "tag:role", "Values": ["db"]}])
assert [i["InstanceId"] for i in found["InstanceInformationList"]] == [db], found
pages = ssm.get_paginator("describe_instance_information").paginate(PaginationConfig={"PageSize": 5})
assert sum(len(p["InstanceInformationList"]) for p in pages) == 7
print("boto3-ok")
"#,
        &[&db],
    );

    // Filters in both forms.
    let prod = stack.aws_json(&[
        "ssm",
        "describe-instance-information",
        "--filters",
        "Key=tag:env,Values=prod",
    ]);
    assert_eq!(
        ids(&prod["InstanceInformationList"]),
        sorted(vec![web.clone(), db.clone()])
    );
    let lost = stack.aws_json(&[
        "ssm",
        "describe-instance-information",
        "--instance-information-filter-list",
        "key=PingStatus,valueSet=ConnectionLost",
    ]);
    assert_eq!(ids(&lost["InstanceInformationList"]), sorted(idle.clone()));
    let web_item = stack.aws_json(&[
        "ssm",
        "describe-instance-information",
        "--filters",
        &format!("Key=InstanceIds,Values={web}"),
    ])["InstanceInformationList"][0]
        .clone();
    assert_eq!(web_item["PingStatus"], "Online", "{web_item}");
    assert_eq!(web_item["PlatformType"], "Linux", "{web_item}");
    assert_eq!(web_item["IsLatestVersion"], true, "{web_item}");
    assert!(web_item["LastPingDateTime"].is_number(), "{web_item}");

    // Pagination: a first page of four, then the rest from its token.
    let first = stack.aws_json(&[
        "ssm",
        "describe-instance-information",
        "--page-size",
        "5",
        "--max-items",
        "4",
    ]);
    let token = first["NextToken"]
        .as_str()
        .expect("a NextToken after four of seven");
    let rest = stack.aws_json(&[
        "ssm",
        "describe-instance-information",
        "--page-size",
        "5",
        "--starting-token",
        token,
    ]);
    let mut all = ids(&first["InstanceInformationList"]);
    all.extend(ids(&rest["InstanceInformationList"]));
    let mut expected = idle.clone();
    expected.extend([web.clone(), db.clone()]);
    assert_eq!(sorted(all), sorted(expected));

    let status = |target: &str| {
        stack.aws_json(&["ssm", "get-connection-status", "--target", target])["Status"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(status(&web), "connected");
    assert_eq!(status(&idle[0]), "notconnected");

    // ssmx instances: the table, filters, JSON, and tagging.
    let table = String::from_utf8(ssmx(&stack, &["instances"]).stdout).unwrap();
    let header = table.lines().next().unwrap();
    for column in [
        "INSTANCE ID",
        "PING STATUS",
        "LAST SEEN",
        "PLATFORM",
        "AGENT",
        "IP",
        "TAGS",
    ] {
        assert!(header.contains(column), "{table}");
    }
    let web_row = table
        .lines()
        .find(|l| l.starts_with(&web))
        .expect("web listed");
    assert!(
        web_row.contains("Online") && web_row.contains("env=prod,role=web"),
        "{table}"
    );
    let idle_row = table
        .lines()
        .find(|l| l.starts_with(&idle[0]))
        .expect("idle listed");
    assert!(
        idle_row.contains("ConnectionLost") && idle_row.contains("never"),
        "{table}"
    );
    assert_eq!(
        ids(&ssmx_json(
            &stack,
            &["instances", "--tag", "role=db", "--json"]
        )),
        vec![db.clone()]
    );
    assert_eq!(
        ids(&ssmx_json(
            &stack,
            &["instances", "--status", "ConnectionLost", "--json"]
        )),
        sorted(idle.clone())
    );
    ssmx(
        &stack,
        &["instances", "tag", &idle[1], "team=blue", "tier=2"],
    );
    let blue = ssmx_json(&stack, &["instances", "--tag", "team=blue", "--json"]);
    assert_eq!(ids(&blue), vec![idle[1].clone()]);
    assert_eq!(blue[0]["Tags"].as_array().unwrap().len(), 2, "{blue}");
    ssmx(&stack, &["instances", "tag", &idle[1], "--remove", "team"]);
    assert!(ids(&ssmx_json(
        &stack,
        &["instances", "--tag-key", "team", "--json"]
    ))
    .is_empty());

    // A node killed is ConnectionLost once the period passes, and Online again when it returns.
    stack.kill_agent();
    wait_for(
        || (stack.ping_status_of(&web).as_deref() == Some("ConnectionLost")).then_some(()),
        "web lost",
    );
    assert_eq!(stack.ping_status_of(&db).as_deref(), Some("Online"));
    stack.start_agent();
    wait_for(
        || (stack.ping_status_of(&web).as_deref() == Some("Online")).then_some(()),
        "web back online",
    );
}

#[test]
fn activations_are_managed_and_a_deregistered_node_is_cut_off() {
    let stack = Stack::start();
    let id = stack.instance_id.clone();
    let listed = ssmx_json(&stack, &["gateway", "activation", "list", "--json"]);
    let used: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["RegistrationsCount"] == 1)
        .collect();
    assert_eq!(used.len(), 1, "{listed}");
    let activation = used[0]["ActivationId"].as_str().unwrap().to_owned();
    let table = String::from_utf8(ssmx(&stack, &["gateway", "activation", "list"]).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&activation) && l.contains("active")),
        "{table}"
    );
    ssmx(&stack, &["gateway", "activation", "delete", &activation]);
    let listed = ssmx_json(&stack, &["gateway", "activation", "list", "--json"]);
    assert!(
        !listed
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["ActivationId"] == activation.as_str()),
        "{listed}"
    );

    // The agent's own credential: valid (refused only for an operation it may not call) before
    // deregistration, unknown after.
    let registration: Value =
        serde_json::from_slice(&std::fs::read(stack.path("agent/registration.json")).unwrap())
            .unwrap();
    let as_agent = || {
        let mut cmd = stack.aws();
        cmd.env(
            "AWS_ACCESS_KEY_ID",
            registration["AccessKeyId"].as_str().unwrap(),
        )
        .env(
            "AWS_SECRET_ACCESS_KEY",
            registration["SecretAccessKey"].as_str().unwrap(),
        )
        .args(["ssm", "describe-instance-information"]);
        String::from_utf8_lossy(&cmd.output().unwrap().stderr).into_owned()
    };
    assert!(as_agent().contains("AccessDeniedException"));

    ssmx(&stack, &["gateway", "instance", "deregister", &id]);
    assert!(!stack.connected(&id));
    assert!(as_agent().contains("UnrecognizedClientException"));
    // The agent keeps trying with its old credential and is refused each time.
    let log = stack.path("agent.log");
    wait_for(
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let (_, after) = text.rsplit_once("control channel lost")?;
            after
                .contains("cannot open the control channel")
                .then_some(())
        },
        "the agent's reconnect refused",
    );
    assert!(!stack.connected(&id));
    assert!(ids(&ssmx_json(&stack, &["instances", "--json"])).is_empty());
}
