//! The one place errors are printed and turned into exit codes (documented in README.md).

use sledger::ErrorClass;

pub const INTERNAL: i32 = 1;
pub const USAGE: i32 = 2;
pub const NOT_FOUND: i32 = 3;
pub const ALREADY_EXISTS: i32 = 4;
pub const INTEGRITY: i32 = 5;
pub const KEY: i32 = 6;
pub const UNAVAILABLE: i32 = 7;
pub const INCOMPATIBLE: i32 = 8;
pub const BACKEND: i32 = 9;
pub const OUT_OF_SYNC: i32 = 10;
pub const UNAUTHENTICATED: i32 = 11;
pub const DENIED: i32 = 12;

/// An error raised by the binary itself for bad command-line input.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A sink differs from the ledger (after `diff`, or what a replay could not fix).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OutOfSync(pub String);

pub fn out_of_sync(msg: impl Into<String>) -> anyhow::Error {
    OutOfSync(msg.into()).into()
}

/// Print `err` (with its causes) to stderr, and with `--format json` also as
/// `{"error":{"code","message"}}` on stdout (scripts read one document whatever happened);
/// return the exit code for it.
pub fn report(err: &anyhow::Error, json: bool) -> i32 {
    let message = message(err);
    eprintln!("error: {message}");
    let code = exit_code(err);
    if json {
        crate::output::json_line(&serde_json::json!({
            "error": {"code": code_name(code), "exit": code, "message": message}
        }));
    }
    code
}

/// The error and its causes, `: `-separated, each cause said once: wrappers that already
/// include their source's text (SQLite's, the OS's) would otherwise repeat it two or three
/// times.
fn message(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The documented name of an exit code (README, exit codes).
fn code_name(code: i32) -> &'static str {
    match code {
        USAGE => "invalid",
        NOT_FOUND => "not_found",
        ALREADY_EXISTS => "already_exists",
        INTEGRITY => "integrity",
        KEY => "key",
        UNAVAILABLE => "unavailable",
        INCOMPATIBLE => "incompatible",
        BACKEND => "backend",
        OUT_OF_SYNC => "out_of_sync",
        UNAUTHENTICATED => "unauthenticated",
        DENIED => "denied",
        _ => "internal",
    }
}

fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UsageError>().is_some() {
        USAGE
    } else if err.downcast_ref::<OutOfSync>().is_some() {
        OUT_OF_SYNC
    } else if let Some(e) = err.chain().find_map(|c| c.downcast_ref::<sledger::Error>()) {
        match e.class() {
            ErrorClass::Invalid => USAGE,
            ErrorClass::NotFound => NOT_FOUND,
            ErrorClass::AlreadyExists => ALREADY_EXISTS,
            ErrorClass::Integrity => INTEGRITY,
            ErrorClass::Key => KEY,
            ErrorClass::Unavailable => UNAVAILABLE,
            ErrorClass::Incompatible => INCOMPATIBLE,
            ErrorClass::Backend => BACKEND,
            ErrorClass::OutOfSync => OUT_OF_SYNC,
            ErrorClass::Unauthenticated => UNAUTHENTICATED,
            ErrorClass::Denied => DENIED,
            _ => INTERNAL,
        }
    } else {
        INTERNAL
    }
}
