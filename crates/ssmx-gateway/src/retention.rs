//! Retention of session recordings: files older than the age limit are deleted, then the oldest
//! until the directory is within the size limit. Recordings of live sessions are never touched.
//! The gateway sweeps at start and then periodically while it runs.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::hub::Hub;
use crate::recording::Format;

/// What is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Recordings older than this are deleted (`None`: kept whatever their age).
    pub max_age: Option<Duration>,
    /// The recordings together stay at or under this many bytes (`None`: no limit).
    pub max_total_bytes: Option<u64>,
    /// How often the directory is swept.
    pub sweep_every: Duration,
}

/// One recording file as found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordingFile {
    /// Its path.
    pub path: PathBuf,
    /// The session it belongs to (the file name without its extension).
    pub session_id: String,
    /// Its size.
    pub bytes: u64,
    /// When it was last written.
    pub modified: SystemTime,
}

/// The files to delete under `policy` at `now`, oldest first; files of `live` sessions are kept.
pub fn expired(
    mut files: Vec<RecordingFile>,
    policy: &RetentionPolicy,
    now: SystemTime,
    live: &HashSet<String>,
) -> Vec<RecordingFile> {
    files.retain(|f| !live.contains(&f.session_id));
    files.sort_by_key(|f| f.modified);
    let too_old = |f: &RecordingFile| {
        policy
            .max_age
            .is_some_and(|age| now.duration_since(f.modified).unwrap_or_default() > age)
    };
    let (old, young): (Vec<_>, Vec<_>) = files.into_iter().partition(too_old);
    let mut doomed = old;
    if let Some(limit) = policy.max_total_bytes {
        let mut total: u64 = young.iter().map(|f| f.bytes).sum();
        for f in young {
            if total <= limit {
                break;
            }
            total -= f.bytes;
            doomed.push(f);
        }
    }
    doomed
}

/// The recordings in `dir` (files with a recording's extension).
fn list(dir: &Path) -> std::io::Result<Vec<RecordingFile>> {
    let extensions = [Format::Asciicast.extension(), Format::ByteLog.extension()];
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let (Some(stem), Some(ext)) = (path.file_stem(), path.extension()) else {
            continue;
        };
        if !extensions.iter().any(|e| ext == *e) {
            continue;
        }
        let meta = entry.metadata()?;
        if !meta.is_file() {
            continue;
        }
        files.push(RecordingFile {
            session_id: stem.to_string_lossy().into_owned(),
            path,
            bytes: meta.len(),
            modified: meta.modified()?,
        });
    }
    Ok(files)
}

/// Applies `policy` to `dir` once; returns how many files were deleted.
pub fn sweep(dir: &Path, policy: &RetentionPolicy, live: &HashSet<String>) -> usize {
    let files = match list(dir) {
        Ok(files) => files,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot list recordings for retention");
            return 0;
        }
    };
    let mut deleted = 0;
    for f in expired(files, policy, SystemTime::now(), live) {
        match std::fs::remove_file(&f.path) {
            Ok(()) => deleted += 1,
            Err(e) => {
                warn!(path = %f.path.display(), error = %e, "cannot delete an expired recording")
            }
        }
    }
    if deleted > 0 {
        info!(deleted, dir = %dir.display(), "expired recordings deleted");
    }
    deleted
}

/// Sweeps the hub's recordings directory now and every `policy.sweep_every` until shutdown.
pub(crate) fn spawn(hub: Arc<Hub>, dir: PathBuf, policy: RetentionPolicy) {
    let stop = hub.shutdown.clone();
    let tracker = hub.tracker.clone();
    tracker.spawn(async move {
        let mut ticks = tokio::time::interval(policy.sweep_every);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            let live = hub.live_session_ids();
            let (dir, policy) = (dir.clone(), policy);
            let _ = tokio::task::spawn_blocking(move || sweep(&dir, &policy, &live)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    fn file(id: &str, mb: u64, age_days: u64, now: SystemTime) -> RecordingFile {
        RecordingFile {
            path: PathBuf::from(format!("{id}.log")),
            session_id: id.to_owned(),
            bytes: mb * MB,
            modified: now - Duration::from_secs(age_days * 86_400),
        }
    }

    fn ids(files: &[RecordingFile]) -> Vec<&str> {
        files.iter().map(|f| f.session_id.as_str()).collect()
    }

    #[test]
    fn old_files_go_then_the_oldest_until_within_size() {
        let now = SystemTime::now();
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_secs(30 * 86_400)),
            max_total_bytes: Some(10 * MB),
            sweep_every: Duration::from_secs(60),
        };
        let files = vec![
            file("ancient", 1, 40, now),
            file("b", 6, 3, now),
            file("c", 6, 2, now),
            file("live", 50, 5, now),
            file("d", 3, 1, now),
        ];
        let live = HashSet::from(["live".to_owned()]);
        assert_eq!(ids(&expired(files, &policy, now, &live)), ["ancient", "b"]);
    }

    #[test]
    fn no_limits_delete_nothing() {
        let now = SystemTime::now();
        let policy = RetentionPolicy {
            max_age: None,
            max_total_bytes: None,
            sweep_every: Duration::from_secs(60),
        };
        let files = vec![file("a", 100, 400, now)];
        assert!(expired(files, &policy, now, &HashSet::new()).is_empty());
    }
}
