//! Bringing secrets in: records read from a file (`sledger import --file`: JSON, JSON lines
//! or a dotenv file), and an existing estate a backend already holds (`import --from URL`:
//! the secrets a Vault mount, an AWS, GCP or Azure backend holds outside sledger's own
//! objects). Adopting an estate is all or nothing: part of it adopted silently would leave the
//! rest unmanaged.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use serde::Deserialize;
use zeroize::Zeroizing;

use crate::crypto::SecretValues;
use crate::error::{Error, Result};
use crate::event::Scope;
use crate::ledger::{Command, Ledger, Outcome};
use crate::sink::{redacted, SinkUrl};

/// One secret to import.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub name: String,
    #[serde(deserialize_with = "crate::validate::unique_keys")]
    pub values: BTreeMap<String, Zeroizing<String>>,
    #[serde(default, deserialize_with = "crate::validate::unique_keys")]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub private: bool,
    /// The line of the file it was read from (JSON lines), for error messages; 0 if none.
    #[serde(skip)]
    pub line: usize,
}

impl Record {
    fn secret_values(&self) -> SecretValues {
        let mut values = SecretValues::new();
        for (k, v) in &self.values {
            values.insert(k.as_str(), v.as_str());
        }
        values
    }

    /// Create the secret, or replace its values and labels if it exists.
    pub fn into_command(self) -> Command {
        let values = self.secret_values();
        Command::Put {
            name: self.name,
            scope: if self.private {
                Scope::Private
            } else {
                Scope::Workspace
            },
            labels: self.labels,
            values,
        }
    }
}

/// What an import did so far: events appended, and secrets that already held what was
/// imported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub appended: u64,
    pub unchanged: u64,
}

/// Appends imported records in all-or-nothing transactions as they come: a file's in batches
/// (a failed batch leaves the earlier ones, and running the same import again finishes it);
/// an estate's (an adoption) in one.
pub struct Importer<'a> {
    ledger: &'a mut Ledger,
    actor: &'a str,
    batch_size: usize,
    pending: Vec<Command>,
    imported: Imported,
    progress: &'a mut dyn FnMut(u64),
}

impl<'a> Importer<'a> {
    /// Records in transactions of `batch_size` (at least 1); `progress` hears how many each
    /// transaction took.
    pub fn new(
        ledger: &'a mut Ledger,
        actor: &'a str,
        batch_size: usize,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        Importer {
            ledger,
            actor,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
            imported: Imported::default(),
            progress,
        }
    }

    /// An adoption: every record in one transaction, since half an estate adopted would leave
    /// the rest unmanaged without anyone noticing.
    pub fn adopting(ledger: &'a mut Ledger, actor: &'a str, progress: &'a mut dyn FnMut(u64)) -> Self {
        Importer {
            batch_size: usize::MAX,
            ..Importer::new(ledger, actor, 1, progress)
        }
    }

    /// Add a record, appending its batch if that fills it.
    pub fn push(&mut self, record: Record) -> Result<()> {
        self.pending.push(record.into_command());
        if self.pending.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Append what is pending; what the whole import did.
    pub fn finish(mut self) -> Result<Imported> {
        self.flush()?;
        Ok(self.imported)
    }

    /// What the transactions appended so far did (they stay if a later one fails).
    pub fn imported(&self) -> Imported {
        self.imported
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let n = batch.len() as u64;
        for outcome in self.ledger.execute(self.actor, batch)? {
            match outcome {
                Outcome::Appended { .. } => self.imported.appended += 1,
                _ => self.imported.unchanged += 1,
            }
        }
        (self.progress)(n);
        Ok(())
    }
}

/// Where an import's records come from.
pub enum Source {
    /// A file, appended in batches.
    File(ImportFile),
    /// The secrets a backend holds outside sledger ([`read_estate`]), adopted in one
    /// transaction.
    Estate(Vec<Record>),
}

impl Source {
    /// How many records there are; a file is checked whole first ([`check_file`]).
    pub fn check(&self, max_value_bytes: usize) -> Result<u64> {
        match self {
            Source::File(file) => check_file(file, max_value_bytes),
            Source::Estate(records) => Ok(records.len() as u64),
        }
    }

    /// Hand each record to `visit`, in order, until it returns false.
    pub fn scan(self, visit: &mut dyn FnMut(Record) -> Result<bool>) -> Result<()> {
        match self {
            Source::File(file) => file.scan(visit),
            Source::Estate(records) => {
                for record in records {
                    if !visit(record)? {
                        break;
                    }
                }
                Ok(())
            }
        }
    }
}

/// An import that stopped at an error: what the transactions before it appended stays, and
/// running the same import again finishes it.
#[derive(Debug)]
pub struct Stopped {
    pub error: Error,
    pub imported: Imported,
}

/// Import every record of `source` as `actor`: a file in transactions of `batch_size`, an
/// estate in one. `progress` hears how many records each transaction took.
pub fn run(
    ledger: &mut Ledger,
    actor: &str,
    source: Source,
    batch_size: usize,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<Imported, Stopped> {
    let mut importer = match &source {
        Source::File(_) => Importer::new(ledger, actor, batch_size, progress),
        Source::Estate(_) => Importer::adopting(ledger, actor, progress),
    };
    let pushed = source.scan(&mut |record| importer.push(record).map(|()| true));
    let imported = importer.imported();
    pushed
        .and_then(|()| importer.finish())
        .map_err(|error| Stopped { error, imported })
}

/// How an import file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An array of {"name", "values", "labels"?, "private"?} objects.
    Json,
    /// One such object per line.
    Jsonl,
    /// KEY=VALUE lines: one secret, whose keys are the variables.
    Dotenv,
}

impl Format {
    /// The format a file's name suggests: `.json`, `.env` (or a file called `.env`), else JSON lines.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            Some("env") => Format::Dotenv,
            _ if path.file_name().is_some_and(|n| n == ".env") => Format::Dotenv,
            _ => Format::Jsonl,
        }
    }
}

fn bad_record(where_: String, e: &serde_json::Error) -> Error {
    // Only the position, or a key given twice: serde_json's other messages may quote the
    // offending (secret) text.
    let text = e.to_string();
    if text.starts_with("duplicate key") {
        let duplicate = text.split(" at line ").next().unwrap_or_default();
        return Error::invalid(format!(
            "{where_}: {duplicate} (column {}); give each key once",
            e.column()
        ));
    }
    Error::invalid(format!(
        "{where_} is not a secret record {{\"name\", \"values\", \"labels\"?, \"private\"?}} (column {})",
        e.column()
    ))
}

/// Check every record of an import file before the first is imported, reading it once in
/// flat memory, and report each invalid one as `SOURCE:LINE: reason` (`SOURCE: record N: …`
/// where there are no lines), all at once: an import either starts with input that can all
/// be imported, or changes nothing. Returns how many records there are.
pub fn check_file(file: &ImportFile, max_value_bytes: usize) -> Result<u64> {
    const SHOWN: usize = 50;
    let source = file.path.display().to_string();
    let (mut problems, mut invalid, mut count) = (Vec::new(), 0u64, 0u64);
    file.scan(&mut |record| {
        count += 1;
        let checked = crate::validate::secret_name(&record.name)
            .and_then(|()| crate::validate::labels(&record.labels))
            .and_then(|()| crate::validate::values(&record.name, &record.secret_values(), max_value_bytes));
        if let Err(e) = checked {
            invalid += 1;
            if problems.len() < SHOWN {
                problems.push(match record.line {
                    0 => format!("{source}: record {count}: {e}"),
                    line => format!("{source}:{line}: {e}"),
                });
            }
        }
        Ok(true)
    })?;
    if invalid == 0 {
        return Ok(count);
    }
    let more = match invalid.saturating_sub(SHOWN as u64) {
        0 => String::new(),
        n => format!("\n… and {n} more"),
    };
    Err(Error::invalid(format!(
        "{invalid} of {count} records cannot be imported, so nothing was; fix them and run the import again:\n{}{more}",
        problems.join("\n")
    )))
}

/// An import file: where it is, how it is written, and (dotenv) the secret it is.
#[derive(Debug, Clone)]
pub struct ImportFile {
    pub path: std::path::PathBuf,
    pub format: Format,
    /// The one secret a dotenv file is.
    pub dotenv_name: Option<String>,
}

impl ImportFile {
    pub fn new(path: &Path, format: Format, dotenv_name: Option<String>) -> Result<Self> {
        if format != Format::Dotenv && dotenv_name.is_some() {
            return Err(Error::invalid(
                "--name is for dotenv input (a .env file is one secret)",
            ));
        }
        if format == Format::Dotenv && dotenv_name.is_none() {
            return Err(Error::invalid(
                "a dotenv file is one secret: name it with --name NAME",
            ));
        }
        Ok(ImportFile {
            path: path.to_path_buf(),
            format,
            dotenv_name,
        })
    }

    /// Hand the file's records to `visit` one at a time, as they are parsed (a JSON array
    /// element by element), until it returns false: memory stays flat in the file's size.
    pub fn scan(&self, visit: &mut dyn FnMut(Record) -> Result<bool>) -> Result<()> {
        let path = &self.path;
        let cannot_read = |e| Error::io(format!("cannot read {}", path.display()), e);
        let file =
            std::fs::File::open(path).map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        let reader = std::io::BufReader::new(file);
        match self.format {
            Format::Json => {
                let mut each = EachRecord {
                    visit,
                    halted: false,
                    error: None,
                };
                let mut de = serde_json::Deserializer::from_reader(reader);
                let parsed = serde::Deserializer::deserialize_seq(&mut de, &mut each);
                if let Some(e) = each.error.take() {
                    return Err(e);
                }
                if each.halted {
                    return Ok(());
                }
                parsed
                    .and_then(|()| de.end())
                    .map_err(|e| bad_record(format!("{}", path.display()), &e))
            }
            Format::Jsonl => {
                for (i, line) in reader.lines().enumerate() {
                    let line = Zeroizing::new(line.map_err(cannot_read)?);
                    if line.trim().is_empty() {
                        continue;
                    }
                    let mut record: Record =
                        serde_json::from_str(&line).map_err(|e| bad_record(format!("line {}", i + 1), &e))?;
                    record.line = i + 1;
                    if !visit(record)? {
                        break;
                    }
                }
                Ok(())
            }
            Format::Dotenv => {
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(cannot_read)?);
                visit(Record {
                    name: self.dotenv_name.clone().unwrap_or_default(),
                    values: parse_dotenv(&text)?,
                    labels: BTreeMap::new(),
                    private: false,
                    line: 0,
                })?;
                Ok(())
            }
        }
    }
}

/// Visits the elements of a JSON array of records as serde_json parses them.
struct EachRecord<'a> {
    visit: &'a mut dyn FnMut(Record) -> Result<bool>,
    /// The visitor asked to stop ...
    halted: bool,
    /// ... or failed, with an error the parser must not reword.
    error: Option<Error>,
}

impl<'de> serde::de::Visitor<'de> for &mut EachRecord<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of secret records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while let Some(record) = seq.next_element::<Record>()? {
            match (self.visit)(record) {
                Ok(true) => continue,
                Ok(false) => self.halted = true,
                Err(e) => self.error = Some(e),
            }
            return Err(serde::de::Error::custom("stopped"));
        }
        Ok(())
    }
}

/// Read every secret under `prefix` ("" for all) of the backend at `url`, to adopt. Refuses
/// (changing nothing) when there is none, when one has no text value to read, or when a name
/// is not a valid sledger name. `progress(done, total)` follows the reads.
pub async fn read_estate(
    url: &str,
    prefix: &str,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Vec<Record>> {
    let backend = SinkUrl::parse(url)?.open_foreign()?;
    let names = backend.names(prefix).await?;
    if names.is_empty() {
        return Err(Error::invalid(format!(
            "{} holds no secrets{} outside sledger's own objects",
            redacted(url),
            if prefix.is_empty() {
                String::new()
            } else {
                format!(" starting with {prefix:?}")
            }
        )));
    }
    let (mut estate, mut unreadable) = (Vec::new(), Vec::new());
    for (done, name) in names.iter().enumerate() {
        match backend.read(name).await? {
            Some(values) => estate.push(Record {
                name: name.clone(),
                values: values
                    .iter()
                    .map(|(k, v)| (k.to_owned(), Zeroizing::new(v.to_owned())))
                    .collect(),
                labels: BTreeMap::new(),
                private: false,
                line: 0,
            }),
            None => unreadable.push(name.clone()),
        }
        progress(done as u64 + 1, names.len() as u64);
    }
    if !unreadable.is_empty() {
        return Err(Error::invalid(format!(
            "{} secret(s) have no text value to read (binary, no enabled version, or deleted meanwhile): {}; \
             narrow the import with --prefix",
            unreadable.len(),
            unreadable.join(", ")
        )));
    }
    let invalid: Vec<String> = estate
        .iter()
        .filter_map(|r| {
            crate::validate::secret_name(&r.name)
                .err()
                .map(|e| format!("{:?} ({e})", r.name))
        })
        .collect();
    if !invalid.is_empty() {
        return Err(Error::invalid(format!(
            "{} name(s) are not valid sledger names: {}; narrow the import with --prefix",
            invalid.len(),
            invalid.join(", ")
        )));
    }
    Ok(estate)
}

/// `KEY=VALUE` lines; blank lines and `#` comments skipped, an `export ` prefix allowed, values
/// optionally in single quotes (literal) or double quotes (with \n, \", \\ escapes).
pub fn parse_dotenv(text: &str) -> Result<BTreeMap<String, Zeroizing<String>>> {
    let mut values = BTreeMap::new();
    let mut lines = text.lines().enumerate();
    while let Some((i, line)) = lines.next() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let entry = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        // Errors give the line number and the key at most: everything else may be a value.
        let key_end = entry
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-".contains(c)))
            .unwrap_or(entry.len());
        let (key, rest) = entry.split_at(key_end);
        let Some(raw) = rest.trim_start().strip_prefix('=') else {
            return Err(Error::invalid(format!(
                "line {} is not KEY=VALUE (a key is letters, digits, _ . and -)",
                i + 1
            )));
        };
        if key.is_empty() || key.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(Error::invalid(format!(
                "line {} does not start with a key (letters, digits, _ . and -, not a digit first)",
                i + 1
            )));
        }
        let raw = raw.trim_start();
        let value = match raw.chars().next() {
            Some(quote @ ('\'' | '"')) => {
                // A quoted value may span lines (a PEM block): read on to its closing quote.
                let mut body = Zeroizing::new(raw[1..].to_owned());
                let close = loop {
                    if let Some(end) = closing_quote(&body, quote) {
                        break end;
                    }
                    let Some((_, next)) = lines.next() else {
                        return Err(Error::invalid(format!(
                            "line {}: the quoted value of {key} is never closed",
                            i + 1
                        )));
                    };
                    body.push('\n');
                    body.push_str(next);
                };
                let after = body[close + 1..].trim();
                if !(after.is_empty() || after.starts_with('#')) {
                    return Err(Error::invalid(format!(
                        "line {}: text follows the closing quote of {key}",
                        i + 1
                    )));
                }
                let inner = &body[..close];
                match quote {
                    '"' => unescape(inner),
                    _ => inner.to_owned(),
                }
            }
            // The lines after an unquoted block would be read as entries of their own, and a
            // base64 line ending in `=` padding would become a key, stored and shown as such.
            _ if raw.starts_with("-----BEGIN") => {
                return Err(Error::invalid(format!(
                    "line {}: the value of {key} is a multi-line block (-----BEGIN …); quote it: {key}=\"…\"",
                    i + 1
                )));
            }
            _ => raw.trim_end().to_owned(),
        };
        if values.insert(key.to_owned(), Zeroizing::new(value)).is_some() {
            return Err(Error::invalid(format!("line {}: {key:?} is set twice", i + 1)));
        }
    }
    Ok(values)
}

/// Where the quote closing a value that opened with `quote` is (double quotes may be escaped).
fn closing_quote(body: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (at, c) in body.char_indices() {
        match c {
            '\\' if quote == '"' && !escaped => escaped = true,
            c if c == quote && !escaped => return Some(at),
            _ => escaped = false,
        }
    }
    None
}

/// `\n`, `\"` and `\\` in a double-quoted value.
fn unescape(inner: &str) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match (c, chars.clone().next()) {
            ('\\', Some('n')) => {
                out.push('\n');
                chars.next();
            }
            ('\\', Some(next)) => {
                out.push(next);
                chars.next();
            }
            (c, _) => out.push(c),
        }
    }
    out
}
