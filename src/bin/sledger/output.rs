//! Rendering helpers shared by the commands: times, tables, JSON lines.

/// `println!` that stops quietly when the reader has gone (`sledger log | head -1`), as Unix
/// tools do, instead of panicking on the broken pipe. (Restoring SIGPIPE's default action would
/// do it too, but would also kill sledger when an exec plug-in exits mid-request.)
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::output::stdout_failed(e);
        }
    }};
}
pub(crate) use outln;

/// Exit 0 when stdout's reader has gone; any other failure to write output is an error.
pub fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write output: {e}");
    std::process::exit(1);
}

use comfy_table::{presets, ContentArrangement, Table};
use serde::Serialize;
use sledger::event::Millis;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub use sledger::event::format_millis as time;

/// RFC 3339 → unix ms, with an error that shows the expected form.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<Millis> {
    let t = OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        crate::exit::usage(format!(
            "{flag} {text:?} is not an RFC 3339 time; write it like 2026-11-28T12:00:00Z or 2026-11-28T13:00:00+01:00"
        ))
    })?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as Millis)
}

pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    t
}

/// One JSON document on one line.
pub fn json_line<T: Serialize + ?Sized>(value: &T) {
    outln!(
        "{}",
        serde_json::to_string(value).expect("output always serialises")
    );
}

pub fn labels(l: &std::collections::BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
