//! The exception hierarchy (`SsmxError` and its subclasses) and the mapping from the client
//! library's errors to it.
//!
//! Failures travel out of the Rust futures as [`Failure`] inside a [`Reply`]; the Python
//! exception is only built where the result is converted for the event loop, a step that
//! holds the GIL anyway, so the runtime's workers never wait for the GIL on an error path.

use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyException, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::BoundObject;
use ssmx_channel::ChannelError;

/// Why an operation failed, before it becomes a Python exception.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The client library failed.
    Client(Arc<ssmx_client::Error>),
    /// The configuration cannot work (e.g. no region).
    Config(String),
    /// A time limit set on the [`crate::manager::SessionManager`] ran out.
    Timeout {
        /// What was being waited for.
        operation: &'static str,
        /// The limit.
        after: Duration,
    },
}

impl From<ssmx_client::Error> for Failure {
    fn from(e: ssmx_client::Error) -> Self {
        Failure::Client(Arc::new(e))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        ssmx_client::Error::Io(e).into()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Client(e) => e.fmt(f),
            Failure::Config(message) => f.write_str(message),
            Failure::Timeout { operation, after } => {
                write!(f, "{operation} did not finish within {after:?}")
            }
        }
    }
}

/// Which Python exception class a failure raises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Base,
    Auth,
    TargetNotConnected,
    Protocol,
    Timeout,
}

impl Failure {
    fn kind(&self) -> Kind {
        match self {
            Failure::Client(e) => client_kind(e),
            Failure::Config(_) => Kind::Base,
            Failure::Timeout { .. } => Kind::Timeout,
        }
    }

    /// The Python exception for this failure (needs the GIL, which the caller has).
    pub(crate) fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let message = self.to_string();
        match exception_types(py) {
            Ok(types) => PyErr::from_type(types.get(self.kind()).bind(py).clone(), message),
            Err(e) => e,
        }
    }
}

/// The exception class for a client library error.
fn client_kind(e: &ssmx_client::Error) -> Kind {
    use ssmx_client::Error as E;
    match e {
        E::TargetNotConnected { .. } => Kind::TargetNotConnected,
        E::AccessDenied(_) => Kind::Auth,
        E::Handshake(_)
        | E::IncompleteResponse { .. }
        | E::WrongSessionType(_)
        | E::Multiplexer(_) => Kind::Protocol,
        E::Channel(ChannelError::ResendLimit { .. }) => Kind::Timeout,
        E::Channel(_) => Kind::Protocol,
        E::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => Kind::Timeout,
        E::Shared(inner) => client_kind(inner),
        _ => Kind::Base,
    }
}

/// The classes of the hierarchy, created once per interpreter.
struct ExceptionTypes {
    base: Py<PyType>,
    auth: Py<PyType>,
    target_not_connected: Py<PyType>,
    protocol: Py<PyType>,
    timeout: Py<PyType>,
}

impl ExceptionTypes {
    fn get(&self, kind: Kind) -> &Py<PyType> {
        match kind {
            Kind::Base => &self.base,
            Kind::Auth => &self.auth,
            Kind::TargetNotConnected => &self.target_not_connected,
            Kind::Protocol => &self.protocol,
            Kind::Timeout => &self.timeout,
        }
    }
}

static EXCEPTION_TYPES: PyOnceLock<ExceptionTypes> = PyOnceLock::new();

fn exception_types(py: Python<'_>) -> PyResult<&ExceptionTypes> {
    EXCEPTION_TYPES.get_or_try_init(py, || create_exception_types(py))
}

/// Creates the classes. `TimeoutError` derives from both `SsmxError` and the builtin
/// `TimeoutError` (so `except TimeoutError` catches it too), which needs a class with two
/// bases: it is made with `type(name, bases, namespace)` like a class statement would.
fn create_exception_types(py: Python<'_>) -> PyResult<ExceptionTypes> {
    let base = PyErr::new_type(
        py,
        c"ssmx.SsmxError",
        Some(c"Base class of every error raised by ssmx."),
        Some(&py.get_type::<PyException>()),
        None,
    )?;
    let subclass = |name: &std::ffi::CStr, doc: &std::ffi::CStr| {
        PyErr::new_type(py, name, Some(doc), Some(base.bind(py)), None)
    };
    let auth = subclass(
        c"ssmx.AuthError",
        c"The credentials were refused or lack permission for the operation.",
    )?;
    let target_not_connected = subclass(
        c"ssmx.TargetNotConnected",
        c"The target has no agent connected to the service.",
    )?;
    let protocol = subclass(
        c"ssmx.ProtocolError",
        c"The service or the agent broke the Session Manager protocol (handshake, data channel \
          or an incomplete API response).",
    )?;
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "ssmx")?;
    namespace.set_item(
        "__doc__",
        "An operation did not finish in time. Also a builtin TimeoutError.",
    )?;
    let bases = PyTuple::new(
        py,
        [
            base.bind(py).as_any(),
            py.get_type::<PyTimeoutError>().as_any(),
        ],
    )?;
    let timeout = py
        .get_type::<PyType>()
        .call1(("TimeoutError", bases, namespace))?
        .cast_into::<PyType>()?
        .unbind();
    Ok(ExceptionTypes {
        base,
        auth,
        target_not_connected,
        protocol,
        timeout,
    })
}

/// Adds the exception classes to the module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let types = exception_types(m.py())?;
    m.add("SsmxError", types.base.clone_ref(m.py()))?;
    m.add("AuthError", types.auth.clone_ref(m.py()))?;
    m.add(
        "TargetNotConnected",
        types.target_not_connected.clone_ref(m.py()),
    )?;
    m.add("ProtocolError", types.protocol.clone_ref(m.py()))?;
    m.add("TimeoutError", types.timeout.clone_ref(m.py()))?;
    Ok(())
}

/// The outcome of an awaitable: its value, or the failure raised as the matching exception
/// when the event loop receives it.
pub(crate) struct Reply<T>(pub Result<T, Failure>);

impl<'py, T> IntoPyObject<'py> for Reply<T>
where
    T: IntoPyObject<'py>,
{
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        match self.0 {
            Ok(value) => value
                .into_pyobject(py)
                .map(|v| v.into_any().into_bound())
                .map_err(Into::into),
            Err(failure) => Err(failure.into_pyerr(py)),
        }
    }
}

/// Runs `fut` within `limit` (if any); running out is a [`Failure::Timeout`].
pub(crate) async fn within<T>(
    limit: Option<Duration>,
    operation: &'static str,
    fut: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match limit {
        None => fut.await,
        Some(after) => tokio::time::timeout(after, fut)
            .await
            .unwrap_or(Err(Failure::Timeout { operation, after })),
    }
}
