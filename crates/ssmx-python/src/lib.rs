//! Python bindings (asyncio) for the ssmx Session Manager client: the native module
//! `ssmx._ssmx`, re-exported by the Python package `ssmx`.
//!
//! Every awaitable returned here is a Rust future driven by a tokio runtime that the module
//! owns (through `pyo3-async-runtimes`, PyO3's maintained asyncio bridge). The futures run on
//! the runtime's worker threads without the GIL; cancelling the awaiting Python task drops the
//! Rust future, and with it whatever that future owned (connections, half-started sessions).
#![forbid(unsafe_code)]

mod errors;
mod manager;
mod port;
mod session;

use std::future::Future;
use std::sync::Mutex;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::BoundObject;

/// How long a background TerminateSession call may take when a session is abandoned (its Python
/// object collected or its start cancelled). Bounded so that no task outlives its session by
/// more than this.
const TERMINATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long `async with` blocks wait, after asking the service to end a session, for the
/// service to confirm the end.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The tokio runtime behind every awaitable of the module (created on first use, shared).
fn runtime() -> &'static tokio::runtime::Runtime {
    pyo3_async_runtimes::tokio::get_runtime()
}

/// Starts a Rust future on the module's runtime, bridged to an asyncio future of the running
/// loop.
type Start = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// The Rust half of a coroutine made by [`coroutine`]: the future, not started yet.
#[pyclass(frozen)]
struct Pending {
    start: Mutex<Option<Start>>,
}

#[pymethods]
impl Pending {
    fn __call__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let start = self
            .start
            .lock()
            .map_err(|_| PyRuntimeError::new_err("coroutine state poisoned"))?
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("coroutine already awaited"))?;
        start(py)
    }
}

/// The result of a Rust future, handed over once.
///
/// The asyncio future that carries a result to the event loop stays referenced from the
/// runtime's threads until PyO3 next processes deferred reference drops, which may be much
/// later. It therefore carries this box, which the coroutine empties at once: the result
/// itself (e.g. a session, which ends when collected) lives exactly as long as the caller
/// keeps it.
#[pyclass(frozen)]
struct Handover {
    value: Mutex<Option<Py<PyAny>>>,
}

#[pymethods]
impl Handover {
    fn take(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self
            .value
            .lock()
            .map_err(|_| PyRuntimeError::new_err("result state poisoned"))?
            .take()
            .unwrap_or_else(|| py.None()))
    }
}

/// Converts a future's output into a [`Handover`] (where the bridge converts results, with
/// the GIL held).
struct Deliver<T>(T);

impl<'py, T> IntoPyObject<'py> for Deliver<T>
where
    T: IntoPyObject<'py>,
{
    type Target = Handover;
    type Output = Bound<'py, Handover>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        let value = self.0.into_pyobject(py).map_err(Into::into)?;
        Bound::new(
            py,
            Handover {
                value: Mutex::new(Some(value.into_any().unbind())),
            },
        )
    }
}

/// The Python half: a real coroutine (so `asyncio.create_task` and `asyncio.run` accept it)
/// that starts the Rust future when first awaited and takes its result out of the handover.
const COROUTINE_SOURCE: &std::ffi::CStr = c"
async def awaitable(start):
    return (await start()).take()
";

/// Wraps `fut` in a coroutine named `name` (its `__qualname__`, e.g. `Session.wait`). Nothing runs until the
/// coroutine is awaited; cancelling the awaiting task drops the Rust future.
fn coroutine<'py, F, T>(py: Python<'py>, name: &str, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static AWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let awaitable = AWAITABLE.get_or_try_init(py, || {
        let module = PyModule::from_code(
            py,
            COROUTINE_SOURCE,
            c"ssmx/_coroutine.py",
            c"ssmx._coroutine",
        )?;
        Ok::<_, PyErr>(module.getattr("awaitable")?.unbind())
    })?;
    let start: Start = Box::new(move |py| {
        let delivered = async move { fut.await.map(Deliver) };
        pyo3_async_runtimes::tokio::future_into_py(py, delivered).map(Bound::unbind)
    });
    let pending = Pending {
        start: Mutex::new(Some(start)),
    };
    let coroutine = awaitable.bind(py).call1((pending,))?;
    coroutine.setattr("__qualname__", name)?;
    coroutine.setattr("__name__", name.rsplit('.').next().unwrap_or(name))?;
    Ok(coroutine)
}

/// A Python `None` as the result of an awaitable that produces nothing.
struct Done;

impl<'py> IntoPyObject<'py> for Done {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(py.None().into_bound(py))
    }
}

/// Logs to stderr when `SSMX_LOG` holds a filter (e.g. `info`, `ssmx_client=debug`), as the
/// `ssmx` command does; otherwise the library stays silent.
fn init_logging() {
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SSMX_LOG") {
        let installed = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
        if installed.is_err() {
            tracing::debug!("a tracing subscriber is already installed; SSMX_LOG not applied");
        }
    }
}

/// asyncio client for AWS Systems Manager Session Manager (AWS or an ssmx gateway).
#[pymodule]
fn _ssmx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    init_logging();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<manager::SessionManager>()?;
    m.add_class::<manager::ExecResult>()?;
    m.add_class::<session::Session>()?;
    m.add_class::<session::OutputStream>()?;
    m.add_class::<port::PortForward>()?;
    errors::register(m)?;
    Ok(())
}
