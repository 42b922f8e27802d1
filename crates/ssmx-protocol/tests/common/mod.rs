//! Loading of the golden data under `tests/data/` shared by the integration tests.

// Each test binary compiles this module and uses its own subset of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

/// `tests/data/`.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// Reads and parses a JSON file below `tests/data/`.
pub fn read_json<T: for<'de> Deserialize<'de>>(relative: &str) -> T {
    let path = data_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("cannot parse {}: {e}", path.display()))
}

/// Hex text to bytes.
pub fn unhex(text: &str) -> Bytes {
    Bytes::from(hex::decode(text).unwrap_or_else(|e| panic!("bad hex {text:.40}…: {e}")))
}

/// Standard base64 text to bytes.
pub fn unbase64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_else(|e| panic!("bad base64 {text:.40}…: {e}"))
}

/// `client_message_vectors.json`.
#[derive(Debug, Deserialize)]
pub struct VectorFile {
    /// Every vector, in file order.
    pub vectors: Vec<Vector>,
}

/// One vector of `client_message_vectors.json`. Header fields are present on "valid" vectors;
/// negative vectors carry `decoded_by_plugin` instead when the plugin could parse them.
#[derive(Debug, Deserialize)]
pub struct Vector {
    pub name: String,
    pub kind: String,
    pub wire_hex: String,
    pub wire_length: usize,
    pub message_type: Option<String>,
    pub schema_version: Option<u32>,
    pub created_date: Option<u64>,
    pub sequence_number: Option<i64>,
    pub flags: Option<u64>,
    pub message_id: Option<String>,
    pub payload_type: Option<u32>,
    /// Base64.
    pub payload: Option<String>,
    pub payload_digest_hex: Option<String>,
    pub header_length: Option<u32>,
    pub payload_length: Option<u32>,
    pub decoded_by_plugin: Option<PluginDecoded>,
}

/// What the official plugin's deserializer read from a negative vector.
#[derive(Debug, Deserialize)]
pub struct PluginDecoded {
    pub header_length: u32,
    pub message_type: String,
    pub schema_version: u32,
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: String,
    pub payload_digest_hex: String,
    pub payload_type: u32,
    pub payload_length: u32,
    pub payload_b64: String,
}

impl Vector {
    /// The frame bytes.
    pub fn wire(&self) -> Bytes {
        let wire = unhex(&self.wire_hex);
        assert_eq!(wire.len(), self.wire_length, "{}: wire_length", self.name);
        wire
    }

    /// The payload bytes of a vector that lists its fields.
    pub fn payload_bytes(&self) -> Vec<u8> {
        unbase64(self.payload.as_deref().expect("vector has a payload"))
    }
}

/// Every vector of `client_message_vectors.json`.
pub fn vectors() -> Vec<Vector> {
    read_json::<VectorFile>("client_message_vectors.json").vectors
}

/// The vector called `name`.
pub fn vector<'a>(all: &'a [Vector], name: &str) -> &'a Vector {
    all.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vector named {name}"))
}

/// A recorded conversation under `tests/data/transcripts/`.
#[derive(Debug, Deserialize)]
pub struct Transcript {
    pub name: String,
    pub events: Vec<Event>,
}

/// One recorded WebSocket or HTTP event.
#[derive(Debug, Deserialize)]
pub struct Event {
    pub channel: String,
    pub direction: String,
    pub ws_opcode: String,
    /// Text frames and HTTP summaries.
    pub text: Option<String>,
    /// Binary frames.
    pub hex: Option<String>,
    /// The recorder's reading of a binary frame.
    pub decoded: Option<RecordedFrame>,
}

/// The recorder's reading of a binary frame.
#[derive(Debug, Deserialize)]
pub struct RecordedFrame {
    pub header_length: u32,
    pub message_type: String,
    pub schema_version: u32,
    pub created_date: u64,
    pub sequence_number: i64,
    pub flags: u64,
    pub message_id: String,
    pub payload_digest: String,
    pub payload_digest_ok: bool,
    pub payload_type: u32,
    pub payload_length: u32,
    /// "utf8" or "base64".
    pub payload_encoding: String,
    pub payload: String,
}

impl RecordedFrame {
    /// The payload bytes.
    pub fn payload_bytes(&self) -> Vec<u8> {
        match self.payload_encoding.as_str() {
            "utf8" => self.payload.as_bytes().to_vec(),
            "base64" => unbase64(&self.payload),
            other => panic!("unknown payload encoding {other}"),
        }
    }
}

/// Every transcript (not the index), sorted by file name.
pub fn transcripts() -> Vec<Transcript> {
    let index: Value = read_json("transcripts/index.json");
    let files = index["files"].as_array().expect("index lists files");
    assert!(!files.is_empty(), "transcript index is empty");
    files
        .iter()
        .map(|f| {
            let file = f["file"].as_str().expect("file name");
            let transcript: Transcript = read_json(&format!("transcripts/{file}"));
            assert_eq!(
                transcript.events.len() as u64,
                f["events"].as_u64().expect("event count"),
                "{file}: event count differs from the index"
            );
            transcript
        })
        .collect()
}
