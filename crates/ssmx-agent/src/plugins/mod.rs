//! The session plugins: what runs on the target for each session type.

pub(crate) mod command;
pub(crate) mod port;
pub(crate) mod shell;
