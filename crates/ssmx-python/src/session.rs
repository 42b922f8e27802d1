//! `Session` (a started session: input, output, resize, wait, terminate) and `OutputStream`
//! (the async iterator over its output).
//!
//! The session's events have one reader. Output iterators take chunks from it; `wait()` takes
//! (and discards) them only while no iterator is open, so a task printing the output and a
//! task waiting for the end can run side by side without stealing from each other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pyo3::exceptions::{PyStopAsyncIteration, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes};
use ssmx_client::{SessionEvent, SessionReader, SessionWriter};
use tokio::sync::{watch, Mutex};

use crate::errors::{within, Failure, Reply};
use crate::manager::end_in_background;
use crate::{Done, CLOSE_TIMEOUT};

/// How a session ended, as seen by whoever read its last event.
#[derive(Clone, Debug)]
enum End {
    /// The service closed the session; the exit code if the session type reports one.
    Finished { exit_code: Option<i32> },
    /// The session failed.
    Failed(Failure),
}

impl End {
    fn exit_code(&self) -> Result<Option<i32>, Failure> {
        match self {
            End::Finished { exit_code } => Ok(*exit_code),
            End::Failed(failure) => Err(failure.clone()),
        }
    }
}

/// Shared by every Python-side user of the session's event stream.
#[derive(Clone, Debug, Default)]
struct Status {
    /// Open output iterators.
    consumers: usize,
    /// Set once the last event has been read.
    end: Option<End>,
}

/// The session behind a Python [`Session`], its iterators and its in-flight awaitables.
struct Core {
    client: ssmx_client::SessionManager,
    session_id: String,
    target: String,
    /// The handshake turned on KMS encryption.
    encrypted: bool,
    timeout: Option<Duration>,
    writer: SessionWriter,
    reader: Mutex<SessionReader>,
    status: watch::Sender<Status>,
}

impl Drop for Core {
    /// The last reference is gone: the reader and writer drop with it, which stops the local
    /// session task; a session the service has not closed is ended there too.
    fn drop(&mut self) {
        let closed = matches!(self.status.borrow().end, Some(End::Finished { .. }));
        if !closed {
            end_in_background(self.client.clone(), self.session_id.clone());
        }
    }
}

impl Core {
    fn end(&self) -> Option<End> {
        self.status.borrow().end.clone()
    }

    /// Reads the next event that matters to Python: a chunk of output (`Some`), or the end
    /// (`None`, recorded for every other waiter). Cancel-safe: an event is either fully
    /// handled or left in the queue.
    async fn next_chunk(&self, reader: &mut SessionReader) -> Result<Option<Bytes>, Failure> {
        if let Some(end) = self.end() {
            return end.exit_code().map(|_| None);
        }
        loop {
            let end = match reader.next_event().await {
                Some(Ok(SessionEvent::Output(chunk) | SessionEvent::StdErr(chunk))) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    return Ok(Some(chunk));
                }
                Some(Ok(SessionEvent::Ended(how))) => {
                    tracing::debug!(?how, "session ended");
                    End::Finished {
                        exit_code: reader.exit_code(),
                    }
                }
                // The reader reports its end exactly once; later calls return `None`.
                None => End::Finished {
                    exit_code: reader.exit_code(),
                },
                Some(Err(e)) => End::Failed(e.into()),
                // Started, ExitCode (kept by the reader), port flags.
                Some(Ok(_)) => continue,
            };
            self.status.send_modify(|s| s.end = Some(end.clone()));
            return end.exit_code().map(|_| None);
        }
    }

    /// Waits for the end of the session, discarding output while no iterator reads it.
    async fn wait(&self) -> Result<Option<i32>, Failure> {
        let mut status = self.status.subscribe();
        loop {
            let consumers = {
                let current = status.borrow_and_update();
                if let Some(end) = &current.end {
                    return end.exit_code();
                }
                current.consumers
            };
            if consumers > 0 {
                // An iterator reads the events; it records the end.
                if status.changed().await.is_err() {
                    return Err(ssmx_client::Error::SessionEnded.into());
                }
                continue;
            }
            let mut reader = self.reader.lock().await;
            let drain = async {
                while self.next_chunk(&mut reader).await?.is_some() {}
                self.end()
                    .map_or(Err(ssmx_client::Error::SessionEnded.into()), |e| {
                        e.exit_code()
                    })
            };
            tokio::select! {
                outcome = drain => return outcome,
                // An iterator was opened: let it have the output.
                _ = status.changed() => {}
            }
        }
    }

    /// Ends the session on the service and waits (a bounded time) for the end.
    async fn close(&self) -> Result<(), Failure> {
        if self.end().is_none() {
            within(self.timeout, "TerminateSession", async {
                Ok(self.writer.terminate().await?)
            })
            .await?;
        }
        within(
            Some(CLOSE_TIMEOUT),
            "waiting for the session to end",
            self.wait(),
        )
        .await?;
        Ok(())
    }
}

/// A started session (from :meth:`SessionManager.start_session`).
///
/// Send input with :meth:`send`, read output with ``async for chunk in session.output()``,
/// and wait for the end with :meth:`wait`. ``async with session:`` ends the session on exit;
/// a session that is garbage-collected before it ended is terminated too.
#[pyclass(frozen, module = "ssmx")]
pub(crate) struct Session {
    core: Arc<Core>,
}

impl Session {
    pub(crate) fn new(
        client: ssmx_client::SessionManager,
        session: ssmx_client::Session,
        timeout: Option<Duration>,
    ) -> Self {
        let session_id = session.id().to_owned();
        let target = session.target().to_owned();
        let (writer, reader) = session.split();
        let encrypted = writer.start_info().is_some_and(|start| start.encrypted);
        Self {
            core: Arc::new(Core {
                client,
                session_id,
                target,
                encrypted,
                timeout,
                writer,
                reader: Mutex::new(reader),
                status: watch::Sender::new(Status::default()),
            }),
        }
    }
}

#[pymethods]
impl Session {
    /// Whether the session's data is encrypted end to end with a KMS data key.
    #[getter]
    fn encrypted(&self) -> bool {
        self.core.encrypted
    }

    /// The session id.
    #[getter]
    fn session_id(&self) -> &str {
        &self.core.session_id
    }

    /// The target the session runs on.
    #[getter]
    fn target(&self) -> &str {
        &self.core.target
    }

    /// Sends input (keystrokes: end a command line with ``b"\r"``).
    fn send<'py>(&self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let data = input_bytes(data)?;
        let core = self.core.clone();
        crate::coroutine(py, "Session.send", async move {
            let sent = core.writer.write(data).await.map_err(Failure::from);
            Ok(Reply(sent.map(|()| Done)))
        })
    }

    /// An async iterator over the session's output (standard error too, for command
    /// sessions), chunk by chunk as bytes, until the session ends.
    fn output(&self) -> OutputStream {
        self.core.status.send_modify(|s| s.consumers += 1);
        OutputStream {
            core: self.core.clone(),
        }
    }

    /// Tells the agent the terminal size.
    fn resize<'py>(&self, py: Python<'py>, rows: u16, cols: u16) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        crate::coroutine(py, "Session.resize", async move {
            let sent = core.writer.resize(cols, rows).await.map_err(Failure::from);
            Ok(Reply(sent.map(|()| Done)))
        })
    }

    /// Waits until the session ends and returns its exit code (``None`` for session types
    /// without one, such as shells). Output nobody iterates over is discarded meanwhile.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        crate::coroutine(
            py,
            "Session.wait",
            async move { Ok(Reply(core.wait().await)) },
        )
    }

    /// Ends the session through the SSM TerminateSession API.
    fn terminate<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        crate::coroutine(py, "Session.terminate", async move {
            let done = within(core.timeout, "TerminateSession", async {
                Ok(core.writer.terminate().await?)
            })
            .await;
            Ok(Reply(done.map(|()| Done)))
        })
    }

    fn __aenter__<'py>(slf: Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.unbind();
        crate::coroutine(py, "Session.__aenter__", async move { Ok(this) })
    }

    #[pyo3(signature = (exc_type, _exc_value, _traceback))]
    fn __aexit__<'py>(
        &self,
        py: Python<'py>,
        exc_type: &Bound<'py, PyAny>,
        _exc_value: &Bound<'py, PyAny>,
        _traceback: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let body_failed = !exc_type.is_none();
        let core = self.core.clone();
        crate::coroutine(py, "Session.__aexit__", async move {
            let closed = match core.close().await {
                // The body's exception is the one that matters.
                Err(e) if body_failed => {
                    tracing::debug!(session_id = %core.session_id, "closing after an error: {e}");
                    Ok(false)
                }
                other => other.map(|()| false),
            };
            Ok(Reply(closed))
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Session(session_id={:?}, target={:?})",
            self.core.session_id, self.core.target
        )
    }
}

/// Async iterator over a session's output, from :meth:`Session.output`.
#[pyclass(frozen, module = "ssmx")]
pub(crate) struct OutputStream {
    core: Arc<Core>,
}

impl Drop for OutputStream {
    fn drop(&mut self) {
        self.core.status.send_modify(|s| s.consumers -= 1);
    }
}

#[pymethods]
impl OutputStream {
    fn __aiter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __anext__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let core = self.core.clone();
        crate::coroutine(py, "OutputStream.__anext__", async move {
            let mut reader = core.reader.lock().await;
            Ok(Reply(core.next_chunk(&mut reader).await.map(Chunk)))
        })
    }
}

/// One chunk of output for Python: `bytes`, or the end of the iteration.
struct Chunk(Option<Bytes>);

impl<'py> IntoPyObject<'py> for Chunk {
    type Target = PyBytes;
    type Output = Bound<'py, PyBytes>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        match self.0 {
            Some(bytes) => Ok(PyBytes::new(py, &bytes)),
            None => Err(PyStopAsyncIteration::new_err(())),
        }
    }
}

/// Copies input from `bytes` or `bytearray`.
fn input_bytes(data: &Bound<'_, PyAny>) -> PyResult<Bytes> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        Ok(Bytes::copy_from_slice(bytes.as_bytes()))
    } else if let Ok(array) = data.cast::<PyByteArray>() {
        Ok(Bytes::from(array.to_vec()))
    } else {
        Err(PyTypeError::new_err(format!(
            "send() takes bytes or bytearray, not {}",
            data.get_type().name()?
        )))
    }
}
