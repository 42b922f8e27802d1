//! The ssmx-gateway integration tests, one module per former test file, built as one
//! test binary: one link instead of one per file (linking the AWS SDK made each binary
//! about 90 MB). Shared harness: [`common`].

mod api;
mod commands;
mod common;
mod documents;
mod fleet;
mod garbage;
mod kms_api;
mod official_agent;
mod relay;
mod restart;
mod sigv4;
mod tags;
mod timers;
mod tls;
mod transcripts;
