//! The ssmx-agent integration tests, one module per former test file, built as one
//! test binary: one link instead of one per file (linking the AWS SDK made each binary
//! about 90 MB). Shared harness: [`common`].
//!
//! `fd_leak.rs` stays a binary of its own: it counts the process's open file
//! descriptors, which the other tests' sockets would change.

mod common;
mod e2e_commands;
mod e2e_exec;
mod e2e_output_upload;
mod e2e_port;
mod e2e_run_document;
mod e2e_shell;
mod official_sequences;
