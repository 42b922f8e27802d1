//! `session-manager-plugin`: the drop-in replacement for the official plugin on its own, without
//! the agent and gateway that `ssmx` carries (see `plugin.rs`).
#![forbid(unsafe_code)]

#[path = "../logging.rs"]
mod logging;
#[path = "../plugin.rs"]
mod plugin;
#[path = "../client/ui/mod.rs"]
mod ui;

fn main() -> std::process::ExitCode {
    plugin::main()
}
