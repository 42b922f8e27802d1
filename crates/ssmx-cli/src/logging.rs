//! Logs on stderr for `ssmx` and `session-manager-plugin`.

use tracing_subscriber::EnvFilter;

/// The variable whose `tracing_subscriber` directives replace the default filter.
const FILTER_ENV_VAR: &str = "SSMX_LOG";
/// Target prefixes of this project's code: the `ssmx` command and every `ssmx_*` crate (filter
/// targets match by prefix), and the plugin binary.
const OWN_TARGETS: &[&str] = &["ssmx", "session_manager_plugin"];

/// Starts logging to stderr with the directives in `SSMX_LOG` (or `RUST_LOG`), or else by
/// `verbose`: 0 shows this project's warnings (its info messages too for a `service`, the
/// gateway or agent, whose log is its operator's record) and other crates' errors only (their
/// warnings, such as the AWS SDK's about a missing config file, mean nothing to a user of the
/// session); 1, 2 and 3 show every crate's info, debug and trace messages.
pub fn init(verbose: u8, service: bool) {
    // Colours only on a terminal: a log file must stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_to(verbose, service, std::io::stderr, ansi);
}

/// Like [`init`], into `writer` (the demo's log file) instead of stderr.
pub fn init_to<W>(verbose: u8, service: bool, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter(verbose, service))
        .with_writer(writer)
        .with_ansi(ansi)
        .init();
}

/// `SSMX_LOG`, else `RUST_LOG`, else the default for `verbose` (see [`init`]).
fn filter(verbose: u8, service: bool) -> EnvFilter {
    let own_level = if service { "info" } else { "warn" };
    EnvFilter::try_from_env(FILTER_ENV_VAR)
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| {
            EnvFilter::new(match verbose {
                0 => OWN_TARGETS.iter().fold("error".to_owned(), |d, target| {
                    format!("{d},{target}={own_level}")
                }),
                1 => "info".to_owned(),
                2 => "debug".to_owned(),
                _ => "trace".to_owned(),
            })
        })
}
