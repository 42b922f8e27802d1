//! Unique signatures for every API call attempt.
//!
//! SigV4 covers a request's content and its one-second timestamp, so two calls with the same
//! parameters made within one second (several port forwards to one target opened at once) are
//! signed identically. A gateway that refuses a signature it has seen before, as ours does
//! against replayed requests, would then refuse the second one. [`UniqueSignatures`] adds a
//! random header to each attempt before it is signed, which makes every signature distinct;
//! services ignore headers they do not know.

use aws_sdk_ssm::config::interceptors::BeforeTransmitInterceptorContextMut;
use aws_sdk_ssm::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ssm::error::BoxError;

/// The header that carries the per-attempt nonce.
pub const NONCE_HEADER: &str = "x-ssmx-nonce";

/// An SDK interceptor that makes each attempt's signature unique (see the module docs). Add it
/// to an SDK client's configuration with `.interceptor(UniqueSignatures)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct UniqueSignatures;

impl Intercept for UniqueSignatures {
    fn name(&self) -> &'static str {
        "UniqueSignatures"
    }

    fn modify_before_signing(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let nonce = format!("{:032x}", rand::random::<u128>());
        context
            .request_mut()
            .headers_mut()
            .insert(NONCE_HEADER, nonce);
        Ok(())
    }
}
