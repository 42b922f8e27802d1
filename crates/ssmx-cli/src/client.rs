//! Client subcommands (being written).

use std::process::ExitCode;

use crate::GlobalArgs;

macro_rules! pending {
    ($($args:ident => $f:ident),*) => {$(
        /// Arguments.
        #[derive(clap::Args)]
        pub struct $args {}
        /// Runs the subcommand.
        pub async fn $f(_global: &GlobalArgs, _args: $args) -> anyhow::Result<ExitCode> {
            anyhow::bail!("not available yet")
        }
    )*};
}
pending!(ShellArgs => shell, PortForwardArgs => port_forward, SshProxyArgs => ssh_proxy, ExecArgs => exec, SessionsArgs => sessions);
