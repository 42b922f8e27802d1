//! Standard-stream port sessions (e.g. `AWS-StartSSHSession` as an ssh ProxyCommand): stdin to
//! the destination, the destination to stdout.

use ssmx_client::PortForwarder;

use super::port::{terminate, ControlSignals};
use super::Ui;

/// Pipes stdin/stdout through the session until stdin ends, the session ends or a control
/// signal arrives. A session still running at the end is terminated, so the agent does not keep
/// it open until the idle timeout.
pub async fn run(forwarder: &PortForwarder, ui: Ui) -> anyhow::Result<()> {
    let mut signals = ControlSignals::watch()?;
    let stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    tokio::select! {
        r = forwarder.forward(stdio) => r?,
        () = signals.recv() => ui.terminate_signal(),
    }
    if !forwarder.is_closed() {
        terminate(forwarder).await;
    }
    Ok(())
}
