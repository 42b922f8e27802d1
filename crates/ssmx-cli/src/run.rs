//! `ssmx run` and `ssmx commands`: Run Command from the terminal. `run` sends a command
//! (SendCommand) to nodes and follows it to the end with a live per-node progress display;
//! `commands` lists, shows and cancels commands.
//!
//! Progress and status lines go to stderr; the nodes' output goes to stdout (their stderr to
//! stderr), or with `--json` one JSON document to stdout. Exit status: 0 when every node
//! succeeded, 1 when any did not, 2 when the command could not be sent or followed, 130 when
//! `run` was interrupted.
//!
//! Ctrl-C (SIGINT) during `run` cancels the command on the nodes that have not finished and
//! keeps following them until they have (Cancelled, or finished meanwhile); a second Ctrl-C
//! stops waiting at once.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use aws_sdk_ssm::types::{
    CommandInvocation, CommandInvocationStatus, CommandPluginStatus, CommandStatus, Target,
};
use serde_json::{json, Value};
use ssmx_client::{shell_join, Error};

use crate::client::{iso8601, manager, parse_parameters};
use crate::GlobalArgs;

/// The document `ssmx run` sends unless told otherwise.
const DEFAULT_DOCUMENT: &str = "AWS-RunShellScript";
/// The parameter of AWS-RunShellScript that takes the script's lines.
const COMMANDS_PARAMETER: &str = "commands";
/// The parameter of AWS-RunShellScript that bounds its run time, in seconds.
const TIMEOUT_PARAMETER: &str = "executionTimeout";
/// How often a running command is looked at.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Exit status when the command could not be sent or followed.
const API_FAILURE: u8 = 2;
/// Characters of stdout and stderr GetCommandInvocation returns at most.
const STDOUT_CONTENT_LIMIT: usize = 24_000;
const STDERR_CONTENT_LIMIT: usize = 8_000;
/// Exit status after Ctrl-C: the shell's convention for a process ended by SIGINT (128 + 2).
const INTERRUPTED: u8 = 130;
/// Characters of the progress bar.
const BAR_WIDTH: usize = 24;

/// Arguments of `ssmx run`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("nodes").required(true).args(["targets", "instance_ids"])))]
pub struct RunArgs {
    /// Where and as whom the SSM API is called.
    #[command(flatten)]
    pub aws: crate::AwsOptions,
    /// Nodes by target, as aws-cli writes them: Key=InstanceIds,Values=ID,ID or
    /// Key=tag:NAME,Values=V,V or Key=tag-key,Values=NAME; repeat to narrow down.
    #[arg(long, value_name = "Key=KEY,Values=V,V", value_parser = parse_target)]
    pub targets: Vec<Target>,
    /// Nodes by id (i-…, mi-…).
    #[arg(long, num_args = 1.., value_name = "ID")]
    pub instance_ids: Vec<String>,
    /// Command document to run.
    #[arg(long, default_value = DEFAULT_DOCUMENT)]
    pub document: String,
    /// Document parameter NAME=VALUE; repeat for several values or parameters.
    #[arg(long = "parameter", value_name = "NAME=VALUE")]
    pub parameters: Vec<String>,
    /// Nodes running the command at once: a count or a percentage (default 50).
    #[arg(long, value_name = "N|N%")]
    pub max_concurrency: Option<String>,
    /// Errors after which the command is sent to no more nodes (default 0).
    #[arg(long, value_name = "N|N%")]
    pub max_errors: Option<String>,
    /// Seconds the command may run on each node (the document's executionTimeout).
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u32>,
    /// Comment recorded with the command.
    #[arg(long)]
    pub comment: Option<String>,
    /// Print the final invocations as JSON on stdout instead of the nodes' output.
    #[arg(long)]
    pub json: bool,
    /// The command and its arguments (after `--`), the document's `commands` parameter.
    #[arg(trailing_var_arg = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `ssmx commands` subcommands.
#[derive(clap::Subcommand)]
pub enum CommandsCommand {
    /// List commands, newest first (tab-separated).
    #[command(
        after_help = "Examples:\n  ssmx commands list\n  ssmx commands list --instance-id mi-0123456789abcdef0 --max 5"
    )]
    List {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// Only commands sent to this node.
        #[arg(long)]
        instance_id: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        max: usize,
    },
    /// Per-node status and output of a command.
    #[command(
        after_help = "Examples:\n  ssmx commands show 0b6f5c3e-1a2b-4c5d-8e9f-0123456789ab --json"
    )]
    Show {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// The command.
        command_id: String,
        /// Print the invocations as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a command on every node it has not finished on (or on the given ones).
    #[command(
        after_help = "Examples:\n  ssmx commands cancel 0b6f5c3e-1a2b-4c5d-8e9f-0123456789ab --instance-ids mi-0123456789abcdef0"
    )]
    Cancel {
        /// Where and as whom the SSM API is called.
        #[command(flatten)]
        aws: crate::AwsOptions,
        /// The command.
        command_id: String,
        /// Only on these nodes.
        #[arg(long, num_args = 1.., value_name = "ID")]
        instance_ids: Vec<String>,
    },
}

/// aws-cli's target shorthand `Key=KEY,Values=V1,V2`.
fn parse_target(text: &str) -> Result<Target, String> {
    let malformed = || format!("target {text:?} is not Key=KEY,Values=VALUE[,VALUE…]");
    let (key, values) = text
        .strip_prefix("Key=")
        .and_then(|rest| rest.split_once(",Values="))
        .ok_or_else(malformed)?;
    if key.is_empty() || values.split(',').any(str::is_empty) {
        return Err(malformed());
    }
    Ok(Target::builder()
        .key(key)
        .set_values(Some(values.split(',').map(str::to_owned).collect()))
        .build())
}

/// An error as the exit status [`API_FAILURE`].
fn or_failure(result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("ssmx: {e:#}");
        ExitCode::from(API_FAILURE)
    })
}

/// Runs `ssmx run`.
pub async fn run(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    Ok(or_failure(send_and_follow(global, args).await))
}

/// Runs `ssmx commands`.
pub async fn commands(global: &GlobalArgs, cmd: CommandsCommand) -> anyhow::Result<ExitCode> {
    Ok(or_failure(match cmd {
        CommandsCommand::List {
            aws,
            instance_id,
            max,
        } => list(&global.with(&aws), instance_id, max).await,
        CommandsCommand::Show {
            aws,
            command_id,
            json,
        } => show(&global.with(&aws), &command_id, json).await,
        CommandsCommand::Cancel {
            aws,
            command_id,
            instance_ids,
        } => cancel(&global.with(&aws), &command_id, instance_ids).await,
    }))
}

async fn ssm(global: &GlobalArgs) -> anyhow::Result<aws_sdk_ssm::Client> {
    Ok(manager(global).await?.ssm().clone())
}

/// Sends the command and follows it; on Ctrl-C cancels it where it has not finished and follows
/// that, exiting [`INTERRUPTED`]; a second Ctrl-C stops at once.
async fn send_and_follow(global: &GlobalArgs, args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("cannot watch SIGINT")?;
    let ssm = ssm(global).await?;
    let json = args.json;
    let command_id = send(&ssm, args).await?;
    let following = follow(&ssm, &command_id, json);
    tokio::pin!(following);
    tokio::select! {
        done = &mut following => return done,
        _ = interrupts.recv() => {}
    }
    eprintln!(
        "Interrupted: cancelling command {command_id} on the nodes not finished yet (Ctrl-C again to stop waiting)."
    );
    cancel_unfinished(&ssm, &command_id).await?;
    tokio::select! {
        done = &mut following => done.map(|_| ExitCode::from(INTERRUPTED)),
        _ = interrupts.recv() => {
            eprintln!("ssmx: stopped waiting; command {command_id} may still be cancelling");
            Ok(ExitCode::from(INTERRUPTED))
        }
    }
}

/// CancelCommand for the nodes of `command_id` that have not reached a final status.
async fn cancel_unfinished(ssm: &aws_sdk_ssm::Client, command_id: &str) -> anyhow::Result<()> {
    let unfinished: Vec<String> = invocations(ssm, command_id)
        .await?
        .iter()
        .filter(|inv| !invocation_is_final(inv.status()))
        .filter_map(|inv| inv.instance_id().map(str::to_owned))
        .collect();
    if unfinished.is_empty() {
        return Ok(());
    }
    ssm.cancel_command()
        .command_id(command_id)
        .set_instance_ids(Some(unfinished))
        .send()
        .await
        .map_err(|e| Error::from_api("CancelCommand", command_id, e))?;
    Ok(())
}

/// SendCommand as `args` say; the command's id.
async fn send(ssm: &aws_sdk_ssm::Client, args: RunArgs) -> anyhow::Result<String> {
    let mut parameters = parse_parameters(&args.parameters)?;
    if !args.command.is_empty() {
        parameters.insert(COMMANDS_PARAMETER.into(), vec![shell_join(&args.command)]);
    }
    if let Some(seconds) = args.timeout {
        parameters.insert(TIMEOUT_PARAMETER.into(), vec![seconds.to_string()]);
    }
    let sent = ssm
        .send_command()
        .document_name(&args.document)
        .set_instance_ids((!args.instance_ids.is_empty()).then_some(args.instance_ids))
        .set_targets((!args.targets.is_empty()).then_some(args.targets))
        .set_parameters(Some(parameters))
        .set_max_concurrency(args.max_concurrency)
        .set_max_errors(args.max_errors)
        .set_comment(args.comment)
        .send()
        .await
        .map_err(|e| Error::from_api("SendCommand", &args.document, e))?;
    Ok(sent
        .command()
        .and_then(|c| c.command_id())
        .context("SendCommand answered without a CommandId")?
        .to_owned())
}

/// Follows `command_id` to its end with the progress display; the exit status of its result.
async fn follow(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new(std::io::stderr().is_terminal());
    progress.line(&format!("Command {command_id} sent."));
    let mut follower = Follower::new(ssm, command_id, json);
    loop {
        // The command first: once it is final, so are the invocations listed after it.
        let command = command(ssm, command_id).await?;
        let finished = command.status().is_some_and(command_is_final);
        let invocations = invocations(ssm, command_id).await?;
        let total = invocations.len().max(count(command.target_count()));
        follower.several = total > 1;
        for inv in &invocations {
            follower.observe(inv, &mut progress).await?;
        }
        progress.counts(&invocations, total);
        if finished {
            progress.done();
            return report(follower.json, &command, &invocations, &follower.results);
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A count from the API (never negative) as a `usize`.
fn count(n: i32) -> usize {
    usize::try_from(n).unwrap_or(0)
}

fn command_is_final(status: &CommandStatus) -> bool {
    matches!(
        status,
        CommandStatus::Success
            | CommandStatus::Failed
            | CommandStatus::TimedOut
            | CommandStatus::Cancelled
    )
}

fn invocation_is_final(status: Option<&CommandInvocationStatus>) -> bool {
    matches!(
        status,
        Some(
            CommandInvocationStatus::Success
                | CommandInvocationStatus::Failed
                | CommandInvocationStatus::TimedOut
                | CommandInvocationStatus::Cancelled
        )
    )
}

/// ListCommands for one command.
async fn command(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
) -> anyhow::Result<aws_sdk_ssm::types::Command> {
    let out = ssm
        .list_commands()
        .command_id(command_id)
        .send()
        .await
        .map_err(|e| Error::from_api("ListCommands", command_id, e))?;
    out.commands()
        .first()
        .cloned()
        .with_context(|| format!("command {command_id} is not listed"))
}

/// Every invocation of a command, with its plugins.
async fn invocations(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
) -> anyhow::Result<Vec<CommandInvocation>> {
    ssm.list_command_invocations()
        .command_id(command_id)
        .details(true)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::from_api("ListCommandInvocations", command_id, e).into())
}

/// One plugin's result on one node, from GetCommandInvocation.
struct PluginOutput {
    name: String,
    status: String,
    status_details: String,
    response_code: i32,
    stdout: String,
    stderr: String,
    stdout_url: String,
    stderr_url: String,
}

/// One node's final result.
struct NodeResult {
    instance_id: String,
    status: String,
    status_details: String,
    plugins: Vec<PluginOutput>,
}

impl NodeResult {
    /// The node's response code: that of its first plugin that did not succeed, else of its
    /// last plugin; -1 without plugins.
    fn response_code(&self) -> i32 {
        self.plugins
            .iter()
            .find(|p| p.status != CommandPluginStatus::Success.as_str())
            .or(self.plugins.last())
            .map_or(-1, |p| p.response_code)
    }

    /// `mi-…: Failed (exit 3)`.
    fn status_line(&self) -> String {
        let mut line = format!("{}: {}", self.instance_id, self.status);
        if self.status_details != self.status {
            line.push_str(&format!(" ({})", self.status_details));
        }
        match self.response_code() {
            -1 => {}
            code => line.push_str(&format!(" (exit {code})")),
        }
        line
    }

    fn to_json(&self) -> Value {
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|p| {
                json!({
                    "Name": p.name,
                    "Status": p.status,
                    "StatusDetails": p.status_details,
                    "ResponseCode": p.response_code,
                    "StandardOutputContent": p.stdout,
                    "StandardErrorContent": p.stderr,
                    "StandardOutputUrl": p.stdout_url,
                    "StandardErrorUrl": p.stderr_url,
                })
            })
            .collect();
        json!({
            "InstanceId": self.instance_id,
            "Status": self.status,
            "StatusDetails": self.status_details,
            "ResponseCode": self.response_code(),
            "Plugins": plugins,
        })
    }

    /// Writes the node's stdout to stdout and its stderr to stderr, each line prefixed by the
    /// node's id when `prefixed`.
    fn print_output(&self, prefixed: bool) -> std::io::Result<()> {
        let prefix = prefixed.then_some(self.instance_id.as_str());
        let (mut stdout, mut stderr) = (std::io::stdout().lock(), std::io::stderr().lock());
        for p in &self.plugins {
            write_output(&mut stdout, prefix, &p.stdout)?;
            write_output(&mut stderr, prefix, &p.stderr)?;
            for (text, limit, url) in [
                (&p.stdout, STDOUT_CONTENT_LIMIT, &p.stdout_url),
                (&p.stderr, STDERR_CONTENT_LIMIT, &p.stderr_url),
            ] {
                if text.chars().count() >= limit && !url.is_empty() {
                    writeln!(
                        stderr,
                        "{}: output cut at {limit} characters; all of it is at {url}",
                        self.instance_id
                    )?;
                }
            }
        }
        stdout.flush()?;
        stderr.flush()
    }
}

fn write_output(to: &mut impl Write, prefix: Option<&str>, text: &str) -> std::io::Result<()> {
    match prefix {
        None => to.write_all(text.as_bytes()),
        Some(prefix) => text
            .lines()
            .try_for_each(|line| writeln!(to, "{prefix}: {line}")),
    }
}

/// The result of `inv`, with each plugin's output.
async fn node_result(
    ssm: &aws_sdk_ssm::Client,
    command_id: &str,
    inv: &CommandInvocation,
) -> anyhow::Result<NodeResult> {
    let instance_id = inv.instance_id().unwrap_or_default();
    let mut plugins = Vec::new();
    for plugin in inv.command_plugins() {
        let out = ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .set_plugin_name(plugin.name().map(str::to_owned))
            .send()
            .await
            .map_err(|e| Error::from_api("GetCommandInvocation", instance_id, e))?;
        let text = |s: Option<&str>| s.unwrap_or_default().to_owned();
        plugins.push(PluginOutput {
            name: text(plugin.name()),
            status: text(out.status().map(|s| s.as_str())),
            status_details: text(out.status_details()),
            response_code: out.response_code(),
            stdout: text(out.standard_output_content()),
            stderr: text(out.standard_error_content()),
            stdout_url: text(out.standard_output_url()),
            stderr_url: text(out.standard_error_url()),
        });
    }
    Ok(NodeResult {
        instance_id: instance_id.to_owned(),
        status: inv.status().map_or("", |s| s.as_str()).to_owned(),
        status_details: inv.status_details().unwrap_or_default().to_owned(),
        plugins,
    })
}

/// Follows a command's invocations: reports each node's changes and prints its output once it
/// is final.
struct Follower<'a> {
    ssm: &'a aws_sdk_ssm::Client,
    command_id: &'a str,
    json: bool,
    /// More than one node: output lines are prefixed by the node.
    several: bool,
    /// The last status reported per node.
    seen: HashMap<String, String>,
    /// Final results, by node.
    results: BTreeMap<String, NodeResult>,
}

impl<'a> Follower<'a> {
    fn new(ssm: &'a aws_sdk_ssm::Client, command_id: &'a str, json: bool) -> Self {
        Self {
            ssm,
            command_id,
            json,
            several: false,
            seen: HashMap::new(),
            results: BTreeMap::new(),
        }
    }

    /// Looks at one invocation's latest state.
    async fn observe(
        &mut self,
        inv: &CommandInvocation,
        progress: &mut Progress,
    ) -> anyhow::Result<()> {
        let instance_id = inv.instance_id().unwrap_or_default();
        let status = inv.status().map_or("", |s| s.as_str());
        if self.results.contains_key(instance_id)
            || self.seen.get(instance_id).map(String::as_str) == Some(status)
        {
            return Ok(());
        }
        self.seen.insert(instance_id.to_owned(), status.to_owned());
        if !invocation_is_final(inv.status()) {
            progress.node(&format!("{instance_id}: {status}"));
            return Ok(());
        }
        let result = node_result(self.ssm, self.command_id, inv).await?;
        progress.above(&result.status_line(), || {
            if self.json {
                Ok(())
            } else {
                result.print_output(self.several)
            }
        })?;
        self.results.insert(instance_id.to_owned(), result);
        Ok(())
    }
}

/// With `json`, prints `{"CommandId", "Status", "StatusDetails", "Invocations": [...]}` on
/// stdout; returns 0 when every node succeeded, else 1 (saying so when no node was targeted).
fn report(
    json: bool,
    command: &aws_sdk_ssm::types::Command,
    invocations: &[CommandInvocation],
    results: &BTreeMap<String, NodeResult>,
) -> anyhow::Result<ExitCode> {
    let ordered: Vec<&NodeResult> = invocations
        .iter()
        .filter_map(|inv| results.get(inv.instance_id().unwrap_or_default()))
        .collect();
    if json {
        let document = json!({
            "CommandId": command.command_id(),
            "Status": command.status().map(|s| s.as_str()),
            "StatusDetails": command.status_details(),
            "Invocations": ordered.iter().map(|r| r.to_json()).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    }
    if invocations.is_empty() {
        eprintln!(
            "ssmx: command {} reached no node ({})",
            command.command_id().unwrap_or_default(),
            command.status_details().unwrap_or_default()
        );
    }
    let all_succeeded = !invocations.is_empty()
        && invocations
            .iter()
            .all(|i| i.status() == Some(&CommandInvocationStatus::Success));
    Ok(if all_succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The progress display on stderr: a redrawn bar on a terminal, plain lines otherwise.
struct Progress {
    tty: bool,
    /// The bar is on screen (terminal only).
    drawn: Option<String>,
    /// The last counts line (plain output prints it when it changes).
    last: String,
}

impl Progress {
    fn new(tty: bool) -> Self {
        Self {
            tty,
            drawn: None,
            last: String::new(),
        }
    }

    /// A status line, kept above the bar.
    fn line(&mut self, text: &str) {
        let _ = self.above(text, || Ok(()));
    }

    /// A node's intermediate status: a line on plain output, left to the bar on a terminal.
    fn node(&mut self, text: &str) {
        if !self.tty {
            eprintln!("{text}");
        }
    }

    /// Clears the bar, prints `text` on stderr, runs `then` (which may print), redraws the bar.
    fn above(
        &mut self,
        text: &str,
        then: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        if self.tty && self.drawn.is_some() {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
        let result = then();
        if let Some(bar) = self.drawn.as_deref().filter(|_| self.tty) {
            eprint!("{bar}");
        }
        result
    }

    /// Shows how many nodes are in each status.
    fn counts(&mut self, invocations: &[CommandInvocation], total: usize) {
        let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
        for inv in invocations {
            *by_status
                .entry(inv.status().map_or("Pending", |s| s.as_str()))
                .or_default() += 1;
        }
        let done = invocations
            .iter()
            .filter(|i| invocation_is_final(i.status()))
            .count();
        let summary = by_status
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!("{done}/{total} done: {summary}");
        if self.tty {
            let filled = (done * BAR_WIDTH).checked_div(total).unwrap_or(0);
            let bar = format!(
                "\r\x1b[2K[{}{}] {text}",
                "#".repeat(filled),
                "-".repeat(BAR_WIDTH - filled)
            );
            eprint!("{bar}");
            self.drawn = Some(bar);
        } else if text != self.last {
            eprintln!("{text}");
        }
        self.last = text;
    }

    /// Leaves the bar's last state on its own line.
    fn done(&mut self) {
        if self.tty && self.drawn.take().is_some() {
            eprintln!();
        }
    }
}

/// `ssmx commands show`: every node's status line and output, or `--json`.
async fn show(global: &GlobalArgs, command_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let ssm = ssm(global).await?;
    let command = command(&ssm, command_id).await?;
    let invocations = invocations(&ssm, command_id).await?;
    let several = invocations.len() > 1;
    let mut results = BTreeMap::new();
    if !json {
        eprintln!(
            "Command {command_id} ({}): {}, {}/{} done, {} errors",
            command.document_name().unwrap_or_default(),
            command.status().map_or("", |s| s.as_str()),
            command.completed_count(),
            command.target_count(),
            command.error_count()
        );
    }
    for inv in &invocations {
        let result = node_result(&ssm, command_id, inv).await?;
        if !json {
            eprintln!("{}", result.status_line());
            result.print_output(several)?;
        }
        results.insert(result.instance_id.clone(), result);
    }
    report(json, &command, &invocations, &results)
}

/// `ssmx commands list`: a table, one row per command, newest first.
async fn list(
    global: &GlobalArgs,
    instance_id: Option<String>,
    max: usize,
) -> anyhow::Result<ExitCode> {
    let ssm = ssm(global).await?;
    let mut pages = ssm
        .list_commands()
        .set_instance_id(instance_id)
        .into_paginator()
        .items()
        .send();
    let mut rows = Vec::new();
    while rows.len() < max {
        let Some(c) = pages
            .try_next()
            .await
            .map_err(|e| Error::from_api("ListCommands", "", e))?
        else {
            break;
        };
        rows.push([
            c.command_id().unwrap_or_default().to_owned(),
            c.document_name().unwrap_or_default().to_owned(),
            c.status().map_or("", |s| s.as_str()).to_owned(),
            c.requested_date_time()
                .map(|t| iso8601(t.secs()))
                .unwrap_or_default(),
            c.target_count().to_string(),
            c.completed_count().to_string(),
            c.error_count().to_string(),
            c.comment().unwrap_or_default().to_owned(),
        ]);
    }
    crate::table::print(
        [
            "COMMAND ID",
            "DOCUMENT",
            "STATUS",
            "REQUESTED",
            "TARGETS",
            "COMPLETED",
            "ERRORS",
            "COMMENT",
        ],
        rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `ssmx commands cancel`.
async fn cancel(
    global: &GlobalArgs,
    command_id: &str,
    instance_ids: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let ssm = ssm(global).await?;
    ssm.cancel_command()
        .command_id(command_id)
        .set_instance_ids((!instance_ids.is_empty()).then_some(instance_ids))
        .send()
        .await
        .map_err(|e| Error::from_api("CancelCommand", command_id, e))?;
    println!("Cancel requested for command {command_id}.");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_as_aws_cli_writes_them() {
        let t = parse_target("Key=InstanceIds,Values=mi-1,mi-2").unwrap();
        assert_eq!(t.key(), Some("InstanceIds"));
        assert_eq!(t.values(), ["mi-1", "mi-2"]);
        let t = parse_target("Key=tag:Role,Values=web").unwrap();
        assert_eq!(
            (t.key(), t.values()),
            (Some("tag:Role"), &["web".to_owned()][..])
        );
        for bad in [
            "InstanceIds=mi-1",
            "Key=,Values=a",
            "Key=k,Values=",
            "Key=k,Values=a,,b",
            "Key=k",
        ] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn output_lines_carry_the_node_when_asked() {
        let mut out = Vec::new();
        write_output(&mut out, Some("mi-1"), "a\nb\n").unwrap();
        write_output(&mut out, None, "c\n").unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "mi-1: a\nmi-1: b\nc\n");
    }
}
