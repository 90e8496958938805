//! Who may do what (ARCHITECTURE.md, server): API tokens as ledger events, roles granted on
//! name patterns, and the checks every server route makes.
//!
//! A token is 256 random bits shown once at issue. The ledger records only its keyed hash
//! (under a key derived from the fingerprint key, which survives master-key rotation), the
//! role, the patterns and the expiry, in a `token.issued` event; `token.revoked` ends it. The
//! registry of live tokens is a pure fold of those events.

use std::collections::BTreeMap;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{Event, Millis, StoredEvent};

/// The event types that make up the token registry.
pub const TOKEN_EVENT_TYPES: &[&str] = &["token.issued", "token.revoked"];

/// Prefix of every token, so a leaked one is recognisable (secret scanners match on it).
pub const TOKEN_PREFIX: &str = "sledger_";

/// What a token's holder may do, on the secrets its patterns match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: tokens, sinks, keys, replays, and what writers and auditors do.
    Admin,
    /// Create and change secrets; read their values.
    Writer,
    /// Read values.
    Reader,
    /// Log, history, verify and metadata; never values.
    Auditor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Auditor => "auditor",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "admin" => Role::Admin,
            "writer" => Role::Writer,
            "reader" => Role::Reader,
            "auditor" => Role::Auditor,
            other => {
                return Err(Error::invalid(format!(
                    "unknown role {other:?}; roles: admin, writer, reader, auditor"
                )))
            }
        })
    }
}

/// What a request wants to do; each route names one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Read a secret's values.
    ReadValue,
    /// Create, change, delete or purge a secret.
    Mutate,
    /// A secret's metadata and history (lists show only the secrets the patterns match).
    ReadMeta,
    /// The whole audit log, the access log and verify.
    Audit,
    /// Tokens, sinks, keys and the replays.
    Administer,
}

impl Role {
    /// Whether this role allows `action` at all (patterns are checked separately).
    pub fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Writer => matches!(action, Action::Mutate | Action::ReadValue | Action::ReadMeta),
            Role::Reader => matches!(action, Action::ReadValue | Action::ReadMeta),
            Role::Auditor => matches!(action, Action::ReadMeta | Action::Audit),
        }
    }
}

/// A live (or revoked, or expired) token as the log describes it. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub patterns: Vec<String>,
    pub issued_at: Millis,
    pub issued_by: String,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
    #[serde(skip)]
    pub hash: [u8; 32],
}

impl TokenInfo {
    /// Usable now: neither revoked nor expired.
    pub fn is_active(&self, now: Millis) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    /// The principal this token acts as: the actor of every event it appends, and the owner
    /// of the private secrets it creates.
    pub fn principal(&self) -> String {
        principal_of(&self.name)
    }

    /// Whether this token may do `action` on the secret called `name` (`None`: an action on
    /// no particular secret, like verify, the log or a list, which the role alone decides).
    pub fn permits(&self, action: Action, name: Option<&str>) -> bool {
        self.role.allows(action)
            && match name {
                Some(name) => self.covers(name),
                // Administering (sinks, tokens, replays) and the whole audit log reach every
                // secret: patterns that cover only some cannot limit them, so such a token
                // (issued before the roles refused patterns) may not do them at all.
                None if whole_ledger(action) => self.covers_every_name(),
                None => true,
            }
    }

    /// Whether a pattern matches every name (`*`).
    pub fn covers_every_name(&self) -> bool {
        self.patterns.iter().any(|p| matches_every_name(p))
    }

    /// Whether one of the token's patterns matches `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| pattern_matches(p, name))
    }
}

/// The principal name of the token called `name`.
pub fn principal_of(name: &str) -> String {
    format!("token:{name}")
}

/// `*` matches any run of characters (slashes included); everything else matches itself.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Token names: like sink names, safe in a URL path and an actor string.
pub fn validate_token_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid token name {name:?}: use 1-64 letters, digits, '-', '_' and '.', starting with a letter or digit"
        )))
    }
}

/// Patterns are secret names with `*` wildcards; an empty list would grant nothing.
/// Actions that reach every secret whatever name they are given.
fn whole_ledger(action: Action) -> bool {
    matches!(action, Action::Administer | Action::Audit)
}

fn matches_every_name(pattern: &str) -> bool {
    !pattern.is_empty() && pattern.chars().all(|c| c == '*')
}

/// An admin administers, and an auditor audits, the whole ledger: a token of either role must
/// cover every name, or its patterns would promise a limit its role does not keep.
pub fn validate_role_patterns(role: Role, patterns: &[String]) -> Result<()> {
    validate_patterns(patterns)?;
    let whole = match role {
        Role::Admin => "an admin token administers the whole ledger (its sinks, tokens and replays)",
        Role::Auditor => "an auditor token reads the whole audit log",
        Role::Writer | Role::Reader => return Ok(()),
    };
    if patterns.iter().any(|p| matches_every_name(p)) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{whole}, so its patterns cannot limit it: give it --pattern '*', or issue a writer \
         or reader token for these names"
    )))
}

pub fn validate_patterns(patterns: &[String]) -> Result<()> {
    if patterns.is_empty() {
        return Err(Error::invalid(
            "a token needs at least one --pattern (e.g. 'prod/*', or '*' for every secret)",
        ));
    }
    for p in patterns {
        if p.is_empty() || p.len() > 512 || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Error::invalid(format!(
                "invalid pattern {p:?}: use a secret name with '*' wildcards"
            )));
        }
    }
    Ok(())
}

/// A token in plaintext, on its way to being hashed. Zeroized on drop; Debug hides it.
#[derive(Clone)]
pub struct TokenSecret(pub zeroize::Zeroizing<String>);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

/// A new token: 256 random bits, URL-safe, with the recognisable prefix. Zeroized on drop.
pub fn generate_token() -> zeroize::Zeroizing<String> {
    use base64::Engine as _;
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref());
    zeroize::Zeroizing::new(format!("{TOKEN_PREFIX}{encoded}"))
}

/// Issue a token called `name` on behalf of `actor`: 256 random bits, recorded as their keyed
/// hash (`token.issued`), expiring `expires_in` from now if given. Returns the document `token
/// create --format json` and `POST /v1/tokens` show: the only time the token itself is ever
/// shown.
pub async fn issue_token(
    ledger: &mut impl crate::handle::Append,
    actor: &str,
    name: &str,
    role: Role,
    patterns: Vec<String>,
    expires_in: Option<std::time::Duration>,
) -> Result<serde_json::Value> {
    const LONGEST: std::time::Duration = std::time::Duration::from_secs(100 * 366 * 24 * 3600);
    if expires_in.is_some_and(|d| d > LONGEST) {
        return Err(crate::Error::invalid(
            "a token's expiry is at most 100 years away; leave it out for a token that does not expire",
        ));
    }
    let expires_at = expires_in.map(|d| crate::ledger::now_ms() + d.as_millis() as i64);
    let token = generate_token();
    let command = crate::ledger::Command::IssueToken {
        name: name.to_owned(),
        role,
        patterns: patterns.clone(),
        expires_at,
        token: TokenSecret(token.clone()),
    };
    let outcomes = ledger.append(actor, vec![command]).await?;
    Ok(serde_json::json!({
        "name": name,
        "role": role,
        "patterns": patterns,
        "expires_at": expires_at.map(crate::event::format_millis),
        "seq": outcomes.iter().find_map(crate::ledger::Outcome::seq),
        "token": *token,
    }))
}

/// The token registry, folded from `token.*` events.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// The seq of the last event folded in.
    pub seq: u64,
    by_name: BTreeMap<String, TokenInfo>,
}

impl Tokens {
    /// Fold one event (in seq order); other event types are ignored.
    pub fn apply(&mut self, stored: &StoredEvent, event: Event) {
        self.seq = self.seq.max(stored.seq);
        match event {
            Event::TokenIssued {
                name,
                role,
                patterns,
                expires_at,
                hash,
            } => {
                self.by_name.insert(
                    name.clone(),
                    TokenInfo {
                        name,
                        role,
                        patterns,
                        issued_at: stored.recorded_at,
                        issued_by: stored.actor.clone(),
                        expires_at,
                        revoked_at: None,
                        hash,
                    },
                );
            }
            Event::TokenRevoked { name } => {
                if let Some(token) = self.by_name.get_mut(&name) {
                    token.revoked_at.get_or_insert(stored.recorded_at);
                }
            }
            _ => {}
        }
    }

    pub fn get(&self, name: &str) -> Option<&TokenInfo> {
        self.by_name.get(name)
    }

    /// Every token ever issued, by name (revoked and expired ones included).
    pub fn all(&self) -> impl Iterator<Item = &TokenInfo> {
        self.by_name.values()
    }

    /// The active token whose hash is `hash`. Compared in constant time.
    pub fn find_active(&self, hash: &[u8; 32], now: Millis) -> Option<&TokenInfo> {
        let wanted = blake3::Hash::from(*hash);
        self.by_name
            .values()
            .find(|t| blake3::Hash::from(t.hash) == wanted && t.is_active(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(role: Role, patterns: &[&str]) -> TokenInfo {
        TokenInfo {
            name: "t".into(),
            role,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            issued_at: 0,
            issued_by: "test".into(),
            expires_at: None,
            revoked_at: None,
            hash: [0; 32],
        }
    }

    /// A pattern-limited admin or auditor (issued before such tokens were refused) keeps its
    /// patterns' secrets but loses what reaches every secret.
    #[test]
    fn whole_ledger_actions_need_a_token_for_every_name() {
        let limited = token(Role::Admin, &["team/*"]);
        assert!(limited.permits(Action::Mutate, Some("team/a")));
        assert!(!limited.permits(Action::Mutate, Some("other/a")));
        assert!(limited.permits(Action::ReadMeta, None));
        assert!(!limited.permits(Action::Administer, None));
        assert!(!limited.permits(Action::Audit, None));
        assert!(!token(Role::Auditor, &["team/*"]).permits(Action::Audit, None));
        assert!(token(Role::Auditor, &["team/*", "*"]).permits(Action::Audit, None));
        assert!(token(Role::Admin, &["**"]).permits(Action::Administer, None));
        assert!(validate_role_patterns(Role::Admin, &["team/*".into()]).is_err());
        assert!(validate_role_patterns(Role::Auditor, &["team/*".into()]).is_err());
        assert!(validate_role_patterns(Role::Reader, &["team/*".into()]).is_ok());
        assert!(validate_role_patterns(Role::Admin, &["*".into()]).is_ok());
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "a/b/c"));
        assert!(pattern_matches("prod/*", "prod/db"));
        assert!(pattern_matches("prod/*", "prod/a/b"));
        assert!(!pattern_matches("prod/*", "production"));
        assert!(!pattern_matches("prod/*", "dev/prod/x"));
        assert!(pattern_matches("prod/db", "prod/db"));
        assert!(!pattern_matches("prod/db", "prod/db2"));
        assert!(pattern_matches("*/db", "prod/db"));
        assert!(pattern_matches("a*b*c", "aXXbYYc"));
        assert!(!pattern_matches("a*b*c", "aXXcYYb"));
        assert!(!pattern_matches("ab*ba", "aba"));
    }

    #[test]
    fn roles() {
        assert!(Role::Reader.allows(Action::ReadValue));
        assert!(!Role::Reader.allows(Action::Mutate));
        assert!(!Role::Auditor.allows(Action::ReadValue));
        assert!(Role::Auditor.allows(Action::ReadMeta));
        assert!(!Role::Reader.allows(Action::Audit));
        assert!(Role::Writer.allows(Action::Mutate));
        assert!(!Role::Writer.allows(Action::Administer));
        assert!(Role::Admin.allows(Action::Administer));
    }

    #[test]
    fn tokens_are_distinct_and_prefixed() {
        let a = generate_token();
        let b = generate_token();
        assert_ne!(*a, *b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
    }
}
