//! Layers: decorators that every sink opened from a URL is wrapped in, one module each
//! (OpenDAL's layers are the model). From the inside out: [`Timeout`] (per request, so time
//! spent waiting for a `max_rps` slot does not count), [`Pace`] (`max_rps`), [`Retry`]
//! (temporary errors of writes, within the caller's deadline: [`retry::within_deadline`]),
//! [`SecretsOnly`] (the sink's anchor is not a secret); an attached sink also in [`Named`] (its
//! name in its errors). A backend does not retry on its own
//! where these layers cannot see it: the cloud clients are built with their retries off.

mod named;
mod pace;
pub mod retry;
mod secrets_only;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

pub use named::Named;
pub use pace::Pace;
pub use retry::{Retry, RetryPolicy};
pub use secrets_only::SecretsOnly;
pub use timeout::Timeout;

use super::Sink;

/// How a sink is wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layers {
    /// Longest a single sink operation may take before it fails as temporary.
    pub timeout: Duration,
    pub retry: RetryPolicy,
    /// At most this many operations a second from this process.
    pub max_rps: Option<u32>,
}

impl Default for Layers {
    fn default() -> Self {
        Layers {
            timeout: timeout::DEFAULT,
            retry: RetryPolicy::default(),
            max_rps: None,
        }
    }
}

impl Layers {
    pub fn wrap(&self, sink: Arc<dyn Sink>) -> Arc<dyn Sink> {
        let sink: Arc<dyn Sink> = Arc::new(Timeout::new(sink, self.timeout));
        let sink: Arc<dyn Sink> = match self.max_rps {
            Some(per_second) => Arc::new(Pace::new(sink, per_second)),
            None => sink,
        };
        Arc::new(SecretsOnly(Arc::new(Retry::new(sink, self.retry.clone()))))
    }
}
