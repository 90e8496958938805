//! Authentication, the token cache, per-token rate limits, and the access log's records of
//! refusals.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

use axum::http::HeaderMap;

use crate::access_log::{AccessOutcome, AccessRecord};
use crate::crypto::TokenHasher;
use crate::error::{Error, Result};
use crate::identity::{Action, TokenInfo, Tokens};
use crate::ledger::now_ms;
use crate::LedgerHandle;

/// A token bucket per token: `per_second` refill, up to `burst`.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    level: f64,
    at: Instant,
}

pub(crate) struct Auth {
    hasher: TokenHasher,
    tokens: RwLock<Tokens>,
    rate: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Who is calling, as a route sees it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub token: TokenInfo,
    pub client: SocketAddr,
}

impl Caller {
    pub fn principal(&self) -> String {
        self.token.principal()
    }
}

/// Why a request got no further than authentication.
pub(crate) enum Refusal {
    Unauthenticated,
    RateLimited,
    Failed(Error),
}

impl Auth {
    pub async fn load(handle: &LedgerHandle, rate: RateLimit) -> Result<Auth> {
        let (hasher, tokens) = handle.read(|l| Ok((l.token_hasher()?, l.tokens()?))).await?;
        Ok(Auth {
            hasher,
            tokens: RwLock::new(tokens),
            rate,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Fold token events appended since the cache was last brought up to date (by this
    /// server or by any other process), so a revocation holds from the next request on.
    pub async fn refresh(&self, handle: &LedgerHandle) -> Result<()> {
        let mut copy = self.tokens.read().expect("not poisoned").clone();
        let seq = copy.seq;
        let copy = handle
            .read(move |l| {
                l.refresh_tokens(&mut copy)?;
                Ok(copy)
            })
            .await?;
        if copy.seq != seq {
            let mut tokens = self.tokens.write().expect("not poisoned");
            if copy.seq > tokens.seq {
                *tokens = copy;
            }
        }
        Ok(())
    }

    pub fn tokens(&self) -> Tokens {
        self.tokens.read().expect("not poisoned").clone()
    }

    /// The active token the request's `Authorization: Bearer` header carries.
    pub async fn authenticate(
        &self,
        handle: &LedgerHandle,
        headers: &HeaderMap,
        client: SocketAddr,
    ) -> std::result::Result<Caller, Refusal> {
        let presented = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(Refusal::Unauthenticated)?;
        let hash = self.hasher.hash(presented);
        self.refresh(handle).await.map_err(Refusal::Failed)?;
        let token = self
            .tokens
            .read()
            .expect("not poisoned")
            .find_active(&hash, now_ms())
            .cloned()
            .ok_or(Refusal::Unauthenticated)?;
        if !self.take(&token.name) {
            return Err(Refusal::RateLimited);
        }
        Ok(Caller { token, client })
    }

    /// Take one failed authentication from the client address's bucket (a tenth of a token's
    /// rate); false when it is empty.
    pub fn take_anonymous(&self, client: SocketAddr) -> bool {
        self.take_scaled(&format!("\0ip:{}", client.ip()), 0.1)
    }

    /// Take one request from the token's bucket; false when it is empty.
    fn take(&self, token: &str) -> bool {
        self.take_scaled(token, 1.0)
    }

    fn take_scaled(&self, key: &str, scale: f64) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("not poisoned");
        let (rate, burst) = (self.rate.per_second * scale, (self.rate.burst * scale).max(1.0));
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            level: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.level = (bucket.level + refill).min(burst);
        bucket.at = now;
        if bucket.level >= 1.0 {
            bucket.level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An access-log record of what `caller` (or an anonymous client) asked for.
pub(crate) fn record(
    principal: &str,
    client: SocketAddr,
    operation: &str,
    outcome: AccessOutcome,
    secret: Option<&str>,
) -> AccessRecord {
    AccessRecord {
        at: now_ms(),
        principal: principal.to_owned(),
        action: operation.to_owned(),
        outcome,
        secret: secret.map(str::to_owned),
        secret_id: None,
        version: None,
        source: None,
        client: Some(client.ip().to_string()),
    }
}

/// Refuse `caller` unless its token allows `action` on `name`; a refusal is recorded in the
/// access log before the 403 goes out.
pub(crate) async fn authorize(
    handle: &LedgerHandle,
    caller: &Caller,
    operation: &str,
    action: Action,
    name: Option<&str>,
) -> Result<()> {
    if caller.token.permits(action, name) {
        return Ok(());
    }
    let denied = record(
        &caller.principal(),
        caller.client,
        operation,
        AccessOutcome::Denied,
        name,
    );
    if let Err(e) = handle.record_access(vec![denied]).await {
        tracing::error!(error = %e, "a denied request could not be recorded");
    }
    Err(Error::Denied {
        principal: caller.principal(),
        what: match name {
            Some(name) => format!("{operation} {name:?}"),
            None => operation.to_owned(),
        },
    })
}
