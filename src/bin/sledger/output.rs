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
use unicode_width::UnicodeWidthStr;

pub use sledger::event::format_millis as time;

/// RFC 3339 → unix ms, with an error that shows the expected form.
pub fn parse_time(flag: &str, text: &str) -> anyhow::Result<Millis> {
    sledger::event::parse_millis(text).ok_or_else(|| {
        crate::exit::usage(format!(
            "{flag} {text:?} is not an RFC 3339 time; write it like 2026-11-28T12:00:00Z or 2026-11-28T13:00:00+01:00"
        ))
    })
}

pub fn table(header: &[&str]) -> Rows {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.iter().copied());
    if let Some(width) = terminal_width() {
        t.set_width(width.min(u16::MAX as usize) as u16);
    }
    Rows(t)
}

/// The width tables must fit in: `COLUMNS` when set (as `ls` honours it, piped or not), else
/// the terminal's when stdout is one; `None` (no limit) when piped without `COLUMNS`.
pub fn terminal_width() -> Option<usize> {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| c > 0)
        .or_else(|| Table::new().width().map(usize::from))
}

/// `text` cut to `width` display columns, ending in `…` when cut.
fn cut(text: &str, width: usize) -> std::borrow::Cow<'_, str> {
    if text.width() <= width {
        return text.into();
    }
    let mut kept = String::new();
    let mut used = 0;
    for c in text.chars() {
        used += unicode_width::UnicodeWidthChar::width(c).unwrap_or(0);
        if used + 1 > width {
            break;
        }
        kept.push(c);
    }
    // A sequence (an emoji and its selector) can be wider than its characters added up: the
    // whole is measured once, and shortened while it does not fit.
    while kept.width() + 1 > width && kept.pop().is_some() {}
    kept.push('…');
    kept.into()
}

/// A table for people: every cell has its control characters escaped ([`printable`]).
pub struct Rows(Table);

impl Rows {
    pub fn add_row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.0
            .add_row(cells.into_iter().map(|c| printable(c.as_ref()).into_owned()));
    }

    /// Never wrap a cell (a token broken across lines is a broken token when copied).
    pub fn without_wrapping(&mut self) {
        self.0.set_content_arrangement(ContentArrangement::Disabled);
    }
}

impl std::fmt::Display for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `text` with control characters (ESC, NUL, newlines, tabs, C1) shown as escapes (`\u{1b}`,
/// `\0`, `\n`), so a value or label cannot move the cursor, recolour or clear a terminal, or
/// fake a table row, as `git` and `ls` quote them. JSON output stays exact.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    text.chars()
        .map(|c| match c {
            '\0' => "\\0".to_owned(),
            c if c.is_control() => c.escape_default().to_string(),
            c => c.to_string(),
        })
        .collect::<String>()
        .into()
}

/// `items` joined with commas in at most about `width` characters: those that fit, then
/// `… +N` for the rest (a secret with 4 000 keys must not make every row of a table 24 000
/// characters wide; `--format json` lists them all).
pub fn abbreviated(items: &[String], width: usize) -> String {
    let mut shown = String::new();
    for (i, item) in items.iter().enumerate() {
        let extra = item.chars().count() + usize::from(i > 0);
        if shown.chars().count() + extra > width && i > 0 {
            return format!("{shown},… +{}", items.len() - i);
        }
        if i > 0 {
            shown.push(',');
        }
        shown.push_str(item);
    }
    shown
}

/// `1 event`, `2 events`.
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
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

/// How a [`Stream`] writes its rows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// A table for people.
    Table,
    /// One JSON array, written element by element.
    JsonArray,
    /// One JSON document per line.
    JsonLines,
}

/// Rows printed as they come, so a list of a million secrets holds one row in memory: JSON
/// (scripts), or a table (people) whose column widths (in display columns) are set by its
/// first [`Stream::SIZING_ROWS`] rows; a wider cell later pushes only its own row. On a
/// terminal, the columns [`Stream::cutting`] names are narrowed until the table fits, and
/// their cells cut with `…`.
pub struct Stream {
    format: StreamFormat,
    header: Vec<String>,
    /// Columns that may be narrowed, the first first.
    cuttable: Vec<usize>,
    widths: Option<Vec<usize>>,
    sizing: Vec<Vec<String>>,
    written: usize,
}

impl Stream {
    const SIZING_ROWS: usize = 200;

    /// A table unless `json` (then `json_style`).
    pub fn new(json: bool, json_style: StreamFormat, header: &[&str]) -> Self {
        Stream {
            format: if json { json_style } else { StreamFormat::Table },
            header: header.iter().map(|h| h.to_string()).collect(),
            cuttable: Vec::new(),
            widths: None,
            sizing: Vec::new(),
            written: 0,
        }
    }

    /// Let these columns be narrowed (in this order) to fit the terminal; never a column a
    /// user copies from, such as a name.
    pub fn cutting(mut self, columns: &[&str]) -> Self {
        self.cuttable = columns
            .iter()
            .filter_map(|c| self.header.iter().position(|h| h == c))
            .collect();
        self
    }

    /// One row: `doc` in JSON mode, else `cells`.
    pub fn push<S: AsRef<str>>(&mut self, doc: &impl Serialize, cells: impl IntoIterator<Item = S>) {
        if self.format != StreamFormat::Table {
            let doc = serde_json::to_string(doc).expect("output always serialises");
            match (self.format, self.written) {
                (StreamFormat::JsonLines, _) => self.write(format_args!("{doc}\n")),
                (_, 0) => self.write(format_args!("[{doc}")),
                _ => self.write(format_args!(",{doc}")),
            }
        } else {
            let row: Vec<String> = cells
                .into_iter()
                .map(|c| printable(c.as_ref()).into_owned())
                .collect();
            match &self.widths {
                Some(widths) => {
                    let line = self.line(widths, &row);
                    self.write(format_args!("{line}\n"));
                }
                None => {
                    self.sizing.push(row);
                    if self.sizing.len() == Self::SIZING_ROWS {
                        self.flush_sizing();
                    }
                }
            }
        }
        self.written += 1;
    }

    /// End the output (the closing bracket, or the rows still held for sizing).
    pub fn finish(mut self) {
        if self.format == StreamFormat::JsonArray {
            self.write(format_args!("{}\n", if self.written == 0 { "[]" } else { "]" }));
        } else if self.format == StreamFormat::Table && self.widths.is_none() {
            self.flush_sizing();
        }
    }

    fn flush_sizing(&mut self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.width()).collect();
        for row in &self.sizing {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.width());
            }
        }
        if let Some(limit) = terminal_width() {
            self.fit(&mut widths, limit);
        }
        let mut text = self.line(&widths, &self.header);
        text.push('\n');
        for row in std::mem::take(&mut self.sizing) {
            text.push_str(&self.line(&widths, &row));
            text.push('\n');
        }
        self.write(format_args!("{text}"));
        self.widths = Some(widths);
    }

    /// Narrow the cuttable columns (never below their header, nor 8 columns) until the table
    /// fits in `limit` columns, or they can go no narrower.
    fn fit(&self, widths: &mut [usize], limit: usize) {
        let total = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
        let mut excess = total.saturating_sub(limit);
        for &column in &self.cuttable {
            let floor = self.header[column].width().max(8);
            let narrower = excess.min(widths[column].saturating_sub(floor));
            widths[column] -= narrower;
            excess -= narrower;
        }
    }

    fn line(&self, widths: &[usize], row: &[String]) -> String {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let cell = match self.cuttable.contains(&i) {
                true => cut(cell, widths[i]),
                false => cell.into(),
            };
            if i + 1 == row.len() {
                line.push_str(&cell);
            } else {
                let pad = widths[i].saturating_sub(cell.width());
                line.push_str(&format!("{cell}{:pad$}  ", ""));
            }
        }
        line.trim_end().to_owned()
    }

    fn write(&self, text: std::fmt::Arguments<'_>) {
        use std::io::Write as _;
        if let Err(e) = std::io::stdout().write_fmt(text) {
            stdout_failed(e);
        }
    }
}

/// A progress bar for people (hidden for scripts, and by indicatif when not on a terminal):
/// `WHAT [=====>    ] 12/40 (3/s, eta 9s)`.
pub fn progress_bar(ctx: &crate::context::Context, what: &str) -> indicatif::ProgressBar {
    if ctx.json() {
        return indicatif::ProgressBar::hidden();
    }
    let template = format!("{what:>12} {{bar:30}} {{pos}}/{{len}} ({{per_sec}}, eta {{eta}})");
    indicatif::ProgressBar::new(0)
        .with_style(indicatif::ProgressStyle::with_template(&template).expect("valid template"))
}

/// The `progress(done, total)` callback the library takes, moving `bar`.
pub fn advance(bar: &indicatif::ProgressBar) -> impl Fn(u64, u64) + Sync + '_ {
    move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}
