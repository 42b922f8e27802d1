//! The ssmx-cli integration tests, one module per former test file, built as one
//! test binary: one link instead of one per file (linking the AWS SDK made each binary
//! about 90 MB). Shared harness: [`common`].
//!
//! `e2e_tls.rs` and `bench_smoke.rs` stay binaries of their own: the first sets
//! `SSL_CERT_FILE` for the whole process, the second measures the process's CPU time and
//! reads `/proc/self/status`, which tests running beside it would disturb.

mod common;
mod e2e_access;
mod e2e_awscli;
mod e2e_command_output;
mod e2e_demo;
mod e2e_encryption;
mod e2e_exec;
mod e2e_fleet;
mod e2e_metrics;
mod e2e_port;
mod e2e_run;
mod e2e_shell;
mod e2e_ssh;
mod plugin_contract;
