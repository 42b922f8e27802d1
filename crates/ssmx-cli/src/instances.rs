//! `ssmx instances`: the fleet as the SSM API reports it (DescribeInstanceInformation), with
//! each node's tags, and `ssmx instances tag` to change them.
//!
//! The table shows what an operator looks for first: which nodes are reachable, when each was
//! last heard from, and which need attention (an agent older than the gateway's latest, a clock
//! far from the gateway's). `--json` prints the API's items as they came, tags added.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use aws_sdk_ssm::config::interceptors::AfterDeserializationInterceptorContextRef;
use aws_sdk_ssm::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ssm::error::BoxError;
use aws_sdk_ssm::types::{InstanceInformationStringFilter, ResourceTypeForTagging, Tag};
use futures::{StreamExt as _, TryStreamExt as _};
use serde_json::{json, Value};
use ssmx_client::Error;

use crate::client::manager;
use crate::GlobalArgs;

/// Page size asked of DescribeInstanceInformation (the API's most).
const PAGE_SIZE: i32 = 50;
/// ListTagsForResource calls in flight at once.
const TAG_LOOKUPS: usize = 8;
/// A clock this many seconds from the gateway's is flagged.
const CLOCK_SKEW_WARNING: i64 = 60;

/// Arguments of `ssmx instances`.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InstancesArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    aws: crate::AwsOptions,
    #[command(subcommand)]
    command: Option<InstancesCommand>,
    #[command(flatten)]
    list: ListArgs,
}

/// What to list.
#[derive(clap::Args)]
struct ListArgs {
    /// Only nodes with this tag (KEY=VALUE; repeat to require several).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Only nodes that have a tag with this key, whatever its value.
    #[arg(long, value_name = "KEY")]
    tag_key: Vec<String>,
    /// Only nodes with this ping status (Online, ConnectionLost, Inactive).
    #[arg(long, value_name = "STATUS")]
    status: Vec<String>,
    /// Print the nodes as a JSON array on stdout.
    #[arg(long)]
    json: bool,
}

/// `ssmx instances` subcommands.
#[derive(clap::Subcommand)]
enum InstancesCommand {
    /// Add or change tags of a node (KEY=VALUE), or remove them (--remove KEY).
    #[command(
        after_help = "Examples:\n  ssmx instances tag mi-0123456789abcdef0 env=prod owner=alice\n  ssmx instances tag mi-0123456789abcdef0 --remove owner"
    )]
    Tag {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// The node (mi-… or i-…).
        instance_id: String,
        /// Tags to add or overwrite.
        #[arg(value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<(String, String)>,
        /// Tag keys to remove.
        #[arg(long, value_name = "KEY")]
        remove: Vec<String>,
    },
}

/// `KEY=VALUE`, as aws-cli's `Key=…,Value=…` is too long to type for each tag.
fn parse_tag(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("tag {text:?} is not KEY=VALUE")),
    }
}

/// Runs `ssmx instances`.
pub async fn run(global: &GlobalArgs, args: InstancesArgs) -> anyhow::Result<ExitCode> {
    let global = global.with(&args.aws);
    match args.command {
        None => list(&manager(&global).await?.ssm().clone(), args.list).await,
        Some(InstancesCommand::Tag {
            aws,
            instance_id,
            tags,
            remove,
        }) => {
            let ssm = manager(&global.with(&aws)).await?.ssm().clone();
            tag(&ssm, &instance_id, tags, remove).await
        }
    }
}

/// Keeps the body of the last response an SDK call read, so that members the SDK does not model
/// (the gateway's `ClockSkewSeconds`) reach the table and `--json`.
#[derive(Clone, Debug, Default)]
struct RawBody(Arc<Mutex<Vec<u8>>>);

impl RawBody {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Intercept for RawBody {
    fn name(&self) -> &'static str {
        "RawBody"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(bytes) = context.response().body().bytes() {
            *self.0.lock().unwrap_or_else(|p| p.into_inner()) = bytes.to_vec();
        }
        Ok(())
    }
}

async fn list(ssm: &aws_sdk_ssm::Client, args: ListArgs) -> anyhow::Result<ExitCode> {
    let mut filters: Vec<InstanceInformationStringFilter> = args
        .tags
        .iter()
        .map(|(key, value)| string_filter(&format!("tag:{key}"), vec![value.clone()]))
        .collect();
    if !args.tag_key.is_empty() {
        filters.push(string_filter("tag-key", args.tag_key.clone()));
    }
    if !args.status.is_empty() {
        filters.push(string_filter("PingStatus", args.status.clone()));
    }
    let raw = RawBody::default();
    let mut nodes: Vec<Value> = Vec::new();
    let mut next_token = None;
    loop {
        ssm.describe_instance_information()
            .set_filters((!filters.is_empty()).then(|| filters.clone()))
            .max_results(PAGE_SIZE)
            .set_next_token(next_token)
            .customize()
            .interceptor(raw.clone())
            .send()
            .await
            .map_err(|e| Error::from_api("DescribeInstanceInformation", "", e))?;
        let page: Value = serde_json::from_slice(&raw.take())
            .context("DescribeInstanceInformation answered with a body that is not JSON")?;
        if let Some(items) = page["InstanceInformationList"].as_array() {
            nodes.extend(items.iter().cloned());
        }
        next_token = page["NextToken"].as_str().map(str::to_owned);
        if next_token.is_none() {
            break;
        }
    }
    let tags: Vec<Vec<(String, String)>> = futures::stream::iter(nodes.iter())
        .map(|node| node_tags(ssm, node["InstanceId"].as_str().unwrap_or_default()))
        .buffered(TAG_LOOKUPS)
        .try_collect()
        .await?;
    if args.json {
        let listed: Vec<Value> = nodes
            .into_iter()
            .zip(tags)
            .map(|(mut node, tags)| {
                node["Tags"] = tags
                    .into_iter()
                    .map(|(k, v)| json!({ "Key": k, "Value": v }))
                    .collect();
                node
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&listed)?);
    } else {
        print_table(&nodes, &tags, now_seconds());
    }
    Ok(ExitCode::SUCCESS)
}

fn string_filter(key: &str, values: Vec<String>) -> InstanceInformationStringFilter {
    InstanceInformationStringFilter::builder()
        .key(key)
        .set_values(Some(values))
        .build()
        .expect("key and values are set")
}

async fn node_tags(
    ssm: &aws_sdk_ssm::Client,
    instance_id: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    // Systems Manager tags only managed instances (`mi-…`); an EC2 instance's tags are EC2's,
    // and ListTagsForResource refuses its id.
    if !instance_id.starts_with("mi-") {
        return Ok(Vec::new());
    }
    let out = ssm
        .list_tags_for_resource()
        .resource_type(ResourceTypeForTagging::ManagedInstance)
        .resource_id(instance_id)
        .send()
        .await
        .map_err(|e| Error::from_api("ListTagsForResource", instance_id, e))?;
    Ok(out
        .tag_list()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect())
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The table: one row a node.
fn print_table(nodes: &[Value], tags: &[Vec<(String, String)>], now: i64) {
    crate::table::print(
        [
            "INSTANCE ID",
            "NAME",
            "PING STATUS",
            "LAST SEEN",
            "PLATFORM",
            "AGENT",
            "IP",
            "TAGS",
            "NOTES",
        ],
        nodes
            .iter()
            .zip(tags)
            .map(|(node, tags)| row(node, tags, now)),
    );
}

fn row(node: &Value, tags: &[(String, String)], now: i64) -> [String; 9] {
    let text = |key: &str| node[key].as_str().unwrap_or_default().to_owned();
    let last_seen = node["LastPingDateTime"]
        .as_f64()
        .map_or_else(|| "never".to_owned(), |at| ago(now - at as i64));
    let platform = format!("{} {}", text("PlatformName"), text("PlatformVersion"))
        .trim()
        .to_owned();
    let mut notes = Vec::new();
    if node["IsLatestVersion"] == json!(false) && !text("AgentVersion").is_empty() {
        notes.push("agent outdated".to_owned());
    }
    if let Some(skew) = node["ClockSkewSeconds"].as_i64() {
        if skew.abs() >= CLOCK_SKEW_WARNING {
            let side = if skew > 0 { "ahead" } else { "behind" };
            notes.push(format!("clock {} {side}", duration(skew.abs())));
        }
    }
    [
        text("InstanceId"),
        text("Name"),
        text("PingStatus"),
        last_seen,
        platform,
        text("AgentVersion"),
        text("IPAddress"),
        tags.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(","),
        notes.join(", "),
    ]
}

/// `42s ago`, `5m ago`, `3h ago`, `2d ago`.
fn ago(seconds: i64) -> String {
    format!("{} ago", duration(seconds.max(0)))
}

fn duration(seconds: i64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

async fn tag(
    ssm: &aws_sdk_ssm::Client,
    instance_id: &str,
    tags: Vec<(String, String)>,
    remove: Vec<String>,
) -> anyhow::Result<ExitCode> {
    if tags.is_empty() && remove.is_empty() {
        anyhow::bail!("give tags as KEY=VALUE, or --remove KEY");
    }
    if !tags.is_empty() {
        let tags = tags
            .into_iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect::<Result<Vec<_>, _>>()?;
        ssm.add_tags_to_resource()
            .resource_type(ResourceTypeForTagging::ManagedInstance)
            .resource_id(instance_id)
            .set_tags(Some(tags))
            .send()
            .await
            .map_err(|e| Error::from_api("AddTagsToResource", instance_id, e))?;
    }
    if !remove.is_empty() {
        ssm.remove_tags_from_resource()
            .resource_type(ResourceTypeForTagging::ManagedInstance)
            .resource_id(instance_id)
            .set_tag_keys(Some(remove))
            .send()
            .await
            .map_err(|e| Error::from_api("RemoveTagsFromResource", instance_id, e))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_flag_old_agents_and_skewed_clocks() {
        let node = json!({
            "InstanceId": "mi-0123456789abcdef0", "Name": "web", "PingStatus": "Online",
            "LastPingDateTime": 1_000.5, "PlatformName": "Ubuntu", "PlatformVersion": "24.04",
            "AgentVersion": "3.1.0.0", "IsLatestVersion": false, "IPAddress": "10.0.0.7",
            "ClockSkewSeconds": -420,
        });
        let r = row(&node, &[("env".into(), "prod".into())], 1_042);
        assert_eq!(r[3], "42s ago");
        assert_eq!(r[4], "Ubuntu 24.04");
        assert_eq!(r[7], "env=prod");
        assert_eq!(r[8], "agent outdated, clock 7m behind");
        let fresh = json!({"InstanceId": "mi-1", "IsLatestVersion": true, "AgentVersion": "3.3.2000.0", "ClockSkewSeconds": 2});
        let r = row(&fresh, &[], 0);
        assert_eq!((r[3].as_str(), r[8].as_str()), ("never", ""));
    }

    #[test]
    fn tags_are_key_equals_value() {
        assert_eq!(parse_tag("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_tag("k="), Ok(("k".into(), String::new())));
        assert!(parse_tag("=v").is_err() && parse_tag("novalue").is_err());
    }
}
