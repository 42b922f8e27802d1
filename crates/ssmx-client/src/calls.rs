//! What our SDK clients add to every API call: a log line per call (`ssmx -v` shows them), and,
//! against a gateway, no retries of a refused connection: nothing listens there, so the call
//! fails at once instead of after the SDK's backoff.

use aws_sdk_ssm::config::interceptors::{FinalizerInterceptorContextRef, InterceptorContext};
use aws_sdk_ssm::config::retry::{ClassifyRetry, RetryAction};
use aws_sdk_ssm::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ssm::error::BoxError;
use aws_smithy_runtime_api::client::orchestrator::Metadata;

/// Logs each API call once it is done: service, operation, HTTP status and, on failure, why.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallLog;

impl Intercept for CallLog {
    fn name(&self) -> &'static str {
        "CallLog"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, operation) = cfg
            .load::<Metadata>()
            .map_or(("?", "?"), |m| (m.service(), m.name()));
        let status = context.response().map(|r| r.status().as_u16());
        match context.output_or_error() {
            Some(Ok(_)) => tracing::info!(service, operation, status, "API call succeeded"),
            Some(Err(e)) => {
                let error = crate::error::causes(e);
                tracing::info!(service, operation, status, %error, "API call failed");
            }
            None => {}
        }
        Ok(())
    }
}

/// A retry classifier that forbids retrying a call whose connection was refused.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetryWhenRefused;

impl ClassifyRetry for NoRetryWhenRefused {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let refused = match ctx.output_or_error() {
            Some(Err(e)) => e
                .as_connector_error()
                .is_some_and(|c| connection_refused(c)),
            _ => false,
        };
        if refused {
            RetryAction::RetryForbidden
        } else {
            RetryAction::NoActionIndicated
        }
    }

    fn name(&self) -> &'static str {
        "NoRetryWhenRefused"
    }
}

/// True when `err` or one of its causes is a refused TCP connection.
pub(crate) fn connection_refused(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        next = e.source();
    }
    false
}
