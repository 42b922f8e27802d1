//! `SessionManager`: the entry point of the Python API (start sessions, run commands, forward
//! ports), and `ExecResult`.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_types::region::Region;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};
use ssmx_client::{copy_command_output, COMMAND_PARAMETER, DEFAULT_EXEC_DOCUMENT};
use tracing::Instrument;

use crate::errors::{within, Failure, Reply};
use crate::session::Session;
use crate::{port, runtime, TERMINATE_TIMEOUT};

/// Starts Session Manager sessions through the SSM API of AWS or of an ssmx gateway.
///
/// Credentials, region and endpoint come from the usual AWS configuration (environment
/// variables, shared config and credentials files), overridden by the arguments:
///
/// * ``profile``: a profile of the shared config files; its credentials are used even when
///   the environment names others (as the AWS CLI's ``--profile`` does).
/// * ``region``: the AWS region (e.g. ``"us-east-1"``).
/// * ``endpoint_url``: the SSM API endpoint, e.g. an ssmx gateway's ``http://127.0.0.1:8080``.
/// * ``timeout``: seconds allowed for starting a session, a command or a port forward (the
///   StartSession call, the data channel connection and the agent's handshake) and for each
///   TerminateSession call. ``None``: no limit beyond the library's own. Running out raises
///   :class:`ssmx.TimeoutError`.
#[pyclass(frozen, module = "ssmx")]
pub(crate) struct SessionManager {
    client: ssmx_client::SessionManager,
    timeout: Option<Duration>,
}

#[pymethods]
impl SessionManager {
    #[new]
    #[pyo3(signature = (profile=None, region=None, endpoint_url=None, *, timeout=None))]
    fn new(
        py: Python<'_>,
        profile: Option<String>,
        region: Option<String>,
        endpoint_url: Option<String>,
        timeout: Option<f64>,
    ) -> PyResult<Self> {
        let timeout = timeout.map(seconds).transpose()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(profile) = &profile {
            let credentials = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .profile_name(profile)
                .build();
            loader = loader
                .profile_name(profile)
                .credentials_provider(credentials);
        }
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = py.detach(|| runtime().block_on(loader.load()));
        if config.region().is_none() {
            let failure = Failure::Config(
                "no AWS region configured: pass region= or set AWS_REGION".to_owned(),
            );
            return Err(failure.into_pyerr(py));
        }
        let client = ssmx_client::SessionManager::new(&config);
        Ok(Self { client, timeout })
    }

    /// Starts a session on ``target`` and waits until it is ready (the agent's handshake).
    ///
    /// ``document_name`` defaults to the service's shell document; ``parameters`` maps each
    /// document parameter to a string or a list of strings. The returned :class:`Session` is
    /// an async context manager that ends the session on exit.
    #[pyo3(signature = (target, document_name=None, parameters=None))]
    fn start_session<'py>(
        &self,
        py: Python<'py>,
        target: String,
        document_name: Option<String>,
        parameters: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let parameters = parameters.map(document_parameters).transpose()?;
        let client = self.client.clone();
        let timeout = self.timeout;
        crate::coroutine(py, "SessionManager.start_session", async move {
            let started = within(timeout, "starting the session", async {
                let mut session = open_session(
                    &client,
                    &target,
                    document_name.as_deref(),
                    parameters.unwrap_or_default(),
                )
                .await?;
                let guard = EndOnDrop::new(&client, session.id());
                session.started().await?;
                guard.disarm();
                Ok(session)
            })
            .await;
            Ok(Reply(started.map(|s| Session::new(client, s, timeout))))
        })
    }

    /// Runs ``command`` on ``target`` (one command line, split shell-style by the agent) and
    /// returns its :class:`ExecResult`: exit code, standard output and standard error.
    fn exec<'py>(
        &self,
        py: Python<'py>,
        target: String,
        command: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client.clone();
        let timeout = self.timeout;
        crate::coroutine(py, "SessionManager.exec", async move {
            Ok(Reply(exec(&client, &target, &command, timeout).await))
        })
    }

    /// Forwards a local TCP port on 127.0.0.1 to ``remote_port`` on the target (or on
    /// ``host`` as seen from the target) and returns a :class:`PortForward` once the session
    /// is ready. ``local_port`` 0 picks a free port; read it from ``PortForward.local_port``.
    #[pyo3(signature = (target, remote_port, local_port=0, host=None))]
    fn port_forward<'py>(
        &self,
        py: Python<'py>,
        target: String,
        remote_port: u16,
        local_port: u16,
        host: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if remote_port == 0 {
            return Err(PyValueError::new_err(
                "remote_port must be between 1 and 65535",
            ));
        }
        let client = self.client.clone();
        let timeout = self.timeout;
        crate::coroutine(py, "SessionManager.port_forward", async move {
            let request = port::Request {
                target,
                remote_port,
                local_port,
                host,
            };
            Ok(Reply(
                port::PortForward::open(client, request, timeout).await,
            ))
        })
    }

    fn __repr__(&self) -> String {
        "SessionManager()".to_owned()
    }
}

/// What a command produced: ``exit_code`` (``None`` when the document does not report one),
/// ``stdout`` and ``stderr`` as bytes.
#[pyclass(frozen, module = "ssmx")]
pub(crate) struct ExecResult {
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

#[pymethods]
impl ExecResult {
    /// The command's exit status, or ``None`` if the agent did not report one.
    #[getter]
    fn exit_code(&self) -> Option<i32> {
        self.exit_code
    }

    /// Everything the command wrote to standard output.
    #[getter]
    fn stdout<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stdout)
    }

    /// Everything the command wrote to standard error.
    #[getter]
    fn stderr<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.stderr)
    }

    fn __repr__(&self) -> String {
        format!(
            "ExecResult(exit_code={}, stdout=<{} bytes>, stderr=<{} bytes>)",
            self.exit_code
                .map_or_else(|| "None".to_owned(), |c| c.to_string()),
            self.stdout.len(),
            self.stderr.len()
        )
    }
}

/// Runs one command through a NonInteractiveCommands session and collects what it produced.
/// If the caller stops waiting, the session is ended on the service.
async fn exec(
    client: &ssmx_client::SessionManager,
    target: &str,
    command: &str,
    timeout: Option<Duration>,
) -> Result<ExecResult, Failure> {
    let parameters = HashMap::from([(COMMAND_PARAMETER.to_owned(), vec![command.to_owned()])]);
    let (session, guard) = within(timeout, "starting the command", async {
        let mut session =
            open_session(client, target, Some(DEFAULT_EXEC_DOCUMENT), parameters).await?;
        let guard = EndOnDrop::new(client, session.id());
        session.started().await?;
        Ok((session, guard))
    })
    .await?;
    let (_writer, mut reader) = session.split();
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let end = copy_command_output(&mut reader, &mut stdout, &mut stderr).await?;
    guard.disarm();
    Ok(ExecResult {
        exit_code: end.exit_code,
        stdout,
        stderr,
    })
}

/// StartSession and the data channel connection. Unlike
/// [`ssmx_client::SessionManager::start_session`], the session is also ended on the service
/// when the caller stops waiting half-way (a cancelled Python task).
pub(crate) async fn open_session(
    client: &ssmx_client::SessionManager,
    target: &str,
    document: Option<&str>,
    parameters: HashMap<String, Vec<String>>,
) -> Result<ssmx_client::Session, Failure> {
    let ticket = client.request_session(target, document, parameters).await?;
    let guard = EndOnDrop::new(client, &ticket.session_id);
    let session = client.attach(ticket, target).await?;
    guard.disarm();
    Ok(session)
}

/// Ends a session on the service when dropped, unless disarmed: the owner of a session that
/// is abandoned half-way (an error, a cancelled task) must not leave it running.
pub(crate) struct EndOnDrop {
    client: ssmx_client::SessionManager,
    session_id: Option<String>,
}

impl EndOnDrop {
    pub(crate) fn new(client: &ssmx_client::SessionManager, session_id: &str) -> Self {
        Self {
            client: client.clone(),
            session_id: Some(session_id.to_owned()),
        }
    }

    /// The session is in good hands; do not end it.
    pub(crate) fn disarm(mut self) {
        self.session_id = None;
    }
}

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if let Some(session_id) = self.session_id.take() {
            end_in_background(self.client.clone(), session_id);
        }
    }
}

/// Calls TerminateSession from a task of the module's runtime, for owners that are going away
/// and cannot wait. The task ends within [`TERMINATE_TIMEOUT`].
pub(crate) fn end_in_background(client: ssmx_client::SessionManager, session_id: String) {
    let span = tracing::info_span!("session", id = %session_id);
    runtime().spawn(
        async move {
            match tokio::time::timeout(TERMINATE_TIMEOUT, client.terminate_session(&session_id))
                .await
            {
                Ok(Ok(())) => tracing::debug!("abandoned session terminated"),
                Ok(Err(e)) => tracing::warn!("could not terminate the abandoned session: {e}"),
                Err(_) => tracing::warn!("TerminateSession for the abandoned session timed out"),
            }
        }
        .instrument(span),
    );
}

/// Converts a number of seconds from Python.
fn seconds(value: f64) -> PyResult<Duration> {
    if value > 0.0 {
        Duration::try_from_secs_f64(value)
            .map_err(|e| PyValueError::new_err(format!("timeout {value}: {e}")))
    } else {
        Err(PyValueError::new_err(format!(
            "timeout must be a positive number of seconds, not {value}"
        )))
    }
}

/// Reads document parameters: each value a string or a sequence of strings.
fn document_parameters(dict: &Bound<'_, PyDict>) -> PyResult<HashMap<String, Vec<String>>> {
    let mut out = HashMap::with_capacity(dict.len());
    for (key, value) in dict.iter() {
        let name: String = key
            .extract()
            .map_err(|_| PyTypeError::new_err("document parameter names must be strings"))?;
        let values = if let Ok(text) = value.cast::<PyString>() {
            vec![text.to_cow()?.into_owned()]
        } else {
            value.extract::<Vec<String>>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "parameter {name:?}: expected a string or a list of strings"
                ))
            })?
        };
        out.insert(name, values);
    }
    Ok(out)
}
