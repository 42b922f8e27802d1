//! The ssmx-client integration tests, one module per former test file, built as one
//! test binary: one link instead of one per file (linking the AWS SDK made each binary
//! about 90 MB). Shared harness: [`common`].
//!
//! `tls.rs` stays a binary of its own: it sets `SSL_CERT_FILE` for the whole
//! process, which the other tests' clients would read.

mod common;
mod e2e;
mod kms;
mod tampering;
mod transcripts;
