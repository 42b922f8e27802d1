//! Session encryption (PROTOCOL.md §7) — being written.
