//! Run Command state on disk, under one directory:
//!
//! * `seen/<job>`: one empty file per job id received (duplicates are refused across restarts);
//! * `pending/<job>.json`, `current/<job>.json`: a document waiting to run / running, with the
//!   results of its finished steps; removed once its final reply is acknowledged;
//! * `replies/<message id>.json`: replies not acknowledged in time, re-sent until acknowledged;
//! * `uploads/<id>.json` and `uploads/<id>.data`: whole outputs the gateway did not take yet;
//! * `downloads/<command>/`: what `aws:downloadContent` fetched;
//! * `corrupt/`: files that could not be read, and documents interrupted by too many restarts
//!   (or received too long ago), moved aside;
//! * `run/<command>/<step>/_script.sh`: the scripts.
//!
//! Every JSON file is written atomically (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ssmx_protocol::command::PluginResult;
use uuid::Uuid;

use super::document::Step;
use super::upload::PendingUpload;

/// A document's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct DocumentState {
    /// `aws.ssm.<command>.<instance>`.
    pub(crate) job_id: String,
    /// The command.
    pub(crate) command_id: String,
    /// The steps, parameters substituted.
    pub(crate) steps: Vec<Step>,
    /// Finished steps by id.
    pub(crate) results: BTreeMap<String, PluginResult>,
    /// The step running, with its process group (0 before it started).
    pub(crate) running: Option<(String, i32)>,
    /// Runs started: the first, and one more for each resume after a restart.
    #[serde(default)]
    pub(crate) run_count: u32,
    /// When the job was received, Unix milliseconds (0: not known).
    #[serde(default)]
    pub(crate) created_ms: u64,
}

/// A reply waiting for `agent_job_reply_ack`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredReply {
    /// The job it answers.
    pub(crate) job_id: String,
    /// The reply frame's MessageId (kept across re-sends).
    pub(crate) message_id: Uuid,
    /// The frame's CreatedDate, Unix milliseconds.
    pub(crate) created_ms: u64,
    /// The `agent_job_reply` payload.
    pub(crate) payload: String,
    /// The document's final reply: its state goes once this is acknowledged.
    pub(crate) is_final: bool,
}

/// Where a document's state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Received, not started.
    Pending,
    /// Started.
    Current,
    /// Given up: interrupted by too many restarts, or received too long ago.
    Corrupt,
}

impl Stage {
    fn dir(self) -> &'static str {
        match self {
            Stage::Pending => "pending",
            Stage::Current => "current",
            Stage::Corrupt => "corrupt",
        }
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    root: PathBuf,
}

impl Store {
    /// The state under `root`; directories are created (mode 0700) when first written to.
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Records `job_id`; false when it was recorded before.
    pub(crate) fn mark_seen(&self, job_id: &str) -> std::io::Result<bool> {
        let path = self.root.join("seen").join(file_name(job_id));
        create_dir(&self.root.join("seen"))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                file.sync_all()?;
                sync_dir(path.parent().unwrap_or(&self.root));
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Forgets job ids recorded more than `age` ago.
    pub(crate) fn prune_seen(&self, age: Duration) {
        let Ok(entries) = std::fs::read_dir(self.root.join("seen")) else {
            return;
        };
        let now = SystemTime::now();
        for entry in entries.flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > age);
            if old {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Writes `state` to `stage`.
    pub(crate) fn save(&self, stage: Stage, state: &DocumentState) -> std::io::Result<()> {
        write_atomic(&self.document_path(stage, &state.job_id), state)
    }

    /// Moves a document from pending to current (writing its latest state).
    pub(crate) fn start(&self, state: &DocumentState) -> std::io::Result<()> {
        self.save(Stage::Current, state)?;
        remove_if_present(&self.document_path(Stage::Pending, &state.job_id))
    }

    /// Moves a document to `corrupt/` (writing its latest state): it is not run again.
    pub(crate) fn abandon(&self, state: &DocumentState) -> std::io::Result<()> {
        self.save(Stage::Corrupt, state)?;
        remove_if_present(&self.document_path(Stage::Pending, &state.job_id))?;
        remove_if_present(&self.document_path(Stage::Current, &state.job_id))
    }

    /// Forgets the document of `job_id`.
    pub(crate) fn remove_document(&self, job_id: &str) {
        for stage in [Stage::Pending, Stage::Current] {
            if let Err(e) = remove_if_present(&self.document_path(stage, job_id)) {
                tracing::warn!(job = %job_id, "cannot remove a document state: {e}");
            }
        }
    }

    /// Every document in `stage`; unreadable files are moved to `corrupt/`.
    pub(crate) fn documents(&self, stage: Stage) -> Vec<DocumentState> {
        self.load_dir(stage.dir())
    }

    /// Persists an unacknowledged reply.
    pub(crate) fn save_reply(&self, reply: &StoredReply) -> std::io::Result<()> {
        write_atomic(&self.reply_path(reply.message_id), reply)
    }

    /// Forgets a persisted reply.
    pub(crate) fn remove_reply(&self, message_id: Uuid) {
        if let Err(e) = remove_if_present(&self.reply_path(message_id)) {
            tracing::warn!(%message_id, "cannot remove a persisted reply: {e}");
        }
    }

    /// Every persisted reply.
    pub(crate) fn replies(&self) -> Vec<StoredReply> {
        self.load_dir("replies")
    }

    /// Keeps `upload` and its `data` until [`Store::remove_upload`].
    pub(crate) fn save_upload(&self, upload: &PendingUpload, data: &[u8]) -> std::io::Result<()> {
        write_bytes_atomic(&self.upload_path(upload.id, "data"), data)?;
        write_atomic(&self.upload_path(upload.id, "json"), upload)
    }

    /// Every kept upload.
    pub(crate) fn uploads(&self) -> Vec<PendingUpload> {
        self.load_dir("uploads")
    }

    /// The bytes of a kept upload.
    pub(crate) fn upload_data(&self, id: Uuid) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.upload_path(id, "data"))
    }

    /// Forgets a kept upload.
    pub(crate) fn remove_upload(&self, id: Uuid) {
        for ext in ["json", "data"] {
            if let Err(e) = remove_if_present(&self.upload_path(id, ext)) {
                tracing::warn!(%id, "cannot remove a kept upload: {e}");
            }
        }
    }

    fn upload_path(&self, id: Uuid, ext: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.{ext}"))
    }

    /// Where `aws:downloadContent` puts what it fetches for `command_id`, and where
    /// `aws:runDocument` looks for relative `LocalPath` documents.
    pub(crate) fn downloads_dir(&self, command_id: &str) -> PathBuf {
        self.root.join("downloads").join(file_name(command_id))
    }

    /// Where the scripts of `step_id` of `command_id` go.
    pub(crate) fn script_dir(&self, command_id: &str, step_id: &str) -> PathBuf {
        self.root
            .join("run")
            .join(file_name(command_id))
            .join(file_name(step_id))
    }

    fn document_path(&self, stage: Stage, job_id: &str) -> PathBuf {
        self.root
            .join(stage.dir())
            .join(format!("{}.json", file_name(job_id)))
    }

    fn reply_path(&self, message_id: Uuid) -> PathBuf {
        self.root.join("replies").join(format!("{message_id}.json"))
    }

    fn load_dir<T: DeserializeOwned>(&self, dir: &str) -> Vec<T> {
        let Ok(entries) = std::fs::read_dir(self.root.join(dir)) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()));
            match parsed {
                Ok(value) => found.push(value),
                Err(e) => {
                    let aside = self
                        .root
                        .join("corrupt")
                        .join(format!("{dir}-{}", entry.file_name().to_string_lossy()));
                    let _ = create_dir(&self.root.join("corrupt"));
                    tracing::warn!(file = %path.display(), moved_to = %aside.display(), "unreadable Run Command state moved aside: {e}");
                    if let Err(e) = std::fs::rename(&path, &aside) {
                        tracing::warn!(file = %path.display(), "cannot move it: {e}");
                    }
                }
            }
        }
        found
    }
}

/// A file name for an id: safe characters kept, others as `%XX`.
fn file_name(id: &str) -> String {
    let mut name = String::new();
    for (i, b) in id.bytes().enumerate() {
        let safe = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
        if safe {
            name.push(char::from(b));
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    name
}

fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_atomic(path: &Path, value: &impl Serialize) -> std::io::Result<()> {
    write_bytes_atomic(
        path,
        &serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
}

fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        Uuid::new_v4()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_safe_file_names() {
        assert_eq!(file_name("aws.ssm.c-1.mi-0"), "aws.ssm.c-1.mi-0");
        assert_eq!(file_name("../x/y"), "%2E.%2Fx%2Fy");
    }

    #[test]
    fn seen_records_and_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned());
        assert!(store.mark_seen("aws.ssm.a.mi-1").unwrap());
        let reopened = Store::new(dir.path().to_owned());
        assert!(!reopened.mark_seen("aws.ssm.a.mi-1").unwrap());
        std::fs::create_dir_all(dir.path().join("pending")).unwrap();
        std::fs::write(dir.path().join("pending/bad.json"), b"{not json").unwrap();
        let state = DocumentState {
            job_id: "aws.ssm.b.mi-1".into(),
            command_id: "b".into(),
            steps: Vec::new(),
            results: BTreeMap::new(),
            running: None,
            run_count: 0,
            created_ms: 0,
        };
        store.save(Stage::Pending, &state).unwrap();
        assert_eq!(store.documents(Stage::Pending), vec![state.clone()]);
        assert!(dir.path().join("corrupt/pending-bad.json").exists());
        store.start(&state).unwrap();
        assert!(store.documents(Stage::Pending).is_empty());
        assert_eq!(store.documents(Stage::Current).len(), 1);
        store.remove_document(&state.job_id);
        assert!(store.documents(Stage::Current).is_empty());
        store.start(&state).unwrap();
        store.abandon(&state).unwrap();
        assert!(store.documents(Stage::Current).is_empty());
        assert_eq!(store.documents(Stage::Corrupt), vec![state]);
    }
}
