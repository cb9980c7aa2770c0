//! [`WithTimeout`]: a per-call timeout around any store.
//!
//! A store call that hangs — a partition to the table alone, a client with no operation timeout,
//! throttling retried for longer than a lease — must not hold a worker's renewal, checkpoint or
//! leader pass past the point where other workers may judge its leases expired. The scheduler
//! therefore wraps every store it is given in a `WithTimeout` with
//! [`SchedulerConfig::store_call_timeout`](crate::SchedulerConfig::store_call_timeout) (default
//! a quarter of the lease duration, and always shorter than a third of it). A call that does not
//! answer in time fails with [`StoreError::TimedOut`]; a write abandoned so may still land later,
//! which the write tokens let the writer recognise ([`Lease::shows_write`](crate::Lease::shows_write)).

use std::future::Future;
use std::time::Duration;

use super::StoreError;
use super::layer::{Layered, StoreLayer, StoreOperation};

/// A store whose every call fails with [`StoreError::TimedOut`] when it does not answer within the
/// timeout. Implements whichever of the three store traits the wrapped store does; build it with
/// `WithTimeout::new(store, Timeout(duration))`.
pub type WithTimeout<S> = Layered<S, Timeout>;

/// The per-call timeout of a [`WithTimeout`] store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeout(pub Duration);

impl StoreLayer for Timeout {
    async fn call<T: Send>(
        &self,
        operation: StoreOperation,
        _key: Option<&str>,
        call: impl Future<Output = Result<T, StoreError>> + Send,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.0, call).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::TimedOut { operation: operation.name(), after: self.0 }),
        }
    }
}
