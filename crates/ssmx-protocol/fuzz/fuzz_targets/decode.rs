//! Arbitrary bytes into the frame decoder (`AgentMessage::decode_with` with and without the
//! digest check, and `peek_message_type`). Run with `../run.sh SECONDS`.

#![no_main]

mod decode_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| decode_check::check(data));
