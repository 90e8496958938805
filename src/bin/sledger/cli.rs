//! Command-line syntax (clap derive). Behaviour lives in the sibling modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "sledger",
    version,
    about = "An event-sourced secrets ledger: every change encrypted, hash-chained and auditable",
    after_help = "Exit codes: 0 ok, 1 internal error, 2 usage or invalid input, 3 not found, \
4 already exists, 5 integrity failure, 6 key failure, 7 unavailable/busy, 8 not a ledger or too new, \
9 a backend refused, 10 a sink differs from the ledger, 11 not authenticated (server), 12 denied (server)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The ledger: a file, or a PostgreSQL database as postgres://USER@HOST:PORT/DB (its
    /// password from PGPASSWORD or ~/.pgpass, never the URL) [default: $XDG_DATA_HOME/sledger/ledger.db]
    #[arg(
        long,
        global = true,
        env = "SLEDGER_LEDGER",
        value_name = "PATH|URL",
        hide_env_values = true
    )]
    pub ledger: Option<String>,
    /// The master key file [default: the ledger path with extension .key]; SLEDGER_MASTER_KEY (base64) wins over it
    #[arg(
        long,
        global = true,
        env = "SLEDGER_KEY_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub key_file: Option<PathBuf>,
    /// Where the master key is held: file:///PATH, env:VAR, or a KMS key
    /// (vault-transit://HOST:PORT/MOUNT/KEY, aws-kms://REGION/KEY,
    /// gcp-kms://projects/P/locations/L/keyRings/R/cryptoKeys/K,
    /// azure-kv-key://VAULT_HOST/keys/NAME); a ledger records its KMS
    /// key, so this is needed at init and to reach the same key another way
    #[arg(
        long,
        global = true,
        env = "SLEDGER_MASTER_KEY_URI",
        value_name = "URI",
        hide_env_values = true
    )]
    pub master_key: Option<String>,
    /// Who is acting, recorded in every event [default: user@host]. On `log`, a filter.
    #[arg(
        long,
        global = true,
        env = "SLEDGER_ACTOR",
        value_name = "NAME",
        hide_env_values = true
    )]
    pub actor: Option<String>,
    /// Output for people (tables) or scripts (JSON)
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// How long a write waits for the primary sink to apply it (e.g. 500ms, 5s; 0 = don't wait).
    /// The write is durable in the ledger either way.
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
    /// Talk to this `sledger serve` instead of opening a ledger (with SLEDGER_TOKEN or --token-file)
    #[arg(
        long,
        global = true,
        env = "SLEDGER_SERVER",
        value_name = "URL",
        hide_env_values = true
    )]
    pub server: Option<String>,
    /// A file (mode 0600) holding the token for --server
    #[arg(
        long,
        global = true,
        env = "SLEDGER_TOKEN_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub token_file: Option<PathBuf>,
    /// Trust this PEM CA certificate for --server (a private CA)
    #[arg(
        long,
        global = true,
        env = "SLEDGER_CA_FILE",
        value_name = "PATH",
        hide_env_values = true
    )]
    pub ca_file: Option<PathBuf>,
    /// Colour in log lines on stderr: auto (a terminal, and NO_COLOR unset), always, never
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Commands {
    /// Create a new ledger and its master key file
    Init(InitArgs),
    /// Create, read, change and inspect secrets
    #[command(subcommand)]
    Secret(SecretCmd),
    /// The audit log: every event, never a value
    #[command(
        after_long_help = "Examples:\n  sledger log --tail 20\n  sledger log --since 2026-11-01T00:00:00Z --type secret.updated --limit 20\n  sledger log --secret db/prod\n  sledger log --after-seq 1200 --limit 100     # the next page: --after-seq LAST\n  sledger log --follow --format json"
    )]
    Log(LogArgs),
    /// Recompute the hash chain and report the first bad event
    Verify(VerifyArgs),
    /// The head each sink witnessed (its anchor), and whether this ledger still holds it
    Anchors(AnchorsArgs),
    /// Master key management
    #[command(subcommand)]
    Key(KeyCmd),
    /// The ledger file itself: online backups
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// Rebuild a lost ledger (at --ledger, which must not exist) from what a sink holds: every
    /// live secret's current values, name, scope, owner and labels, under its own id. A sqlite
    /// sink needs the lost ledger's master key
    #[command(
        after_long_help = "Examples:\n  sledger --ledger /srv/new.db --key-file /safe/ledger.key recover --from sqlite:///srv/old.sink.db\n  sledger --ledger /srv/new.db recover --from 'aws-sm://eu-west-1?prefix=prod/' --primary sqlite:///srv/new.sink.db"
    )]
    Recover(RecoverArgs),
    /// Bulk-load secrets from a file or adopt a backend's existing secrets, in batched
    /// all-or-nothing transactions
    Import(ImportArgs),
    /// Attach, inspect and manage sinks (where workloads read secrets)
    #[command(subcommand)]
    Sink(SinkCmd),
    /// Bring every projected sink up to the ledger's head
    Project(ProjectArgs),
    /// Materialise the state at a point into a sink no projector writes (a standby, or a URL)
    Replay(ReplayArgs),
    /// Roll the current state back to a past point with compensating events; without --at or
    /// --seq, repair the primary sink from the ledger
    #[command(
        after_long_help = "Examples:\n  sledger restore --at 2026-11-28T12:00:00Z --dry-run   # what rolling back would change\n  sledger restore --at 2026-11-28T12:00:00Z\n  sledger restore --seq 1200 --secret db/prod\n  sledger restore                                        # repair a wiped primary from the ledger"
    )]
    Restore(RestoreArgs),
    /// Resync every backup sink to the ledger (creates, updates, deletes of stray objects)
    Backup(BackupArgs),
    /// Move the primary to another sink with no downtime: attach, catch up, verify, promote
    Migrate(MigrateArgs),
    /// What a sink lacks, holds stale, holds extra, or holds changed behind the ledger's back
    /// (exit 10 when it differs)
    Diff(DiffArgs),
    /// Make a sink match the ledger's head (what `diff` reports, fixed)
    Reconcile(ReconcileArgs),
    /// Serve the HTTP API (tokens, roles, an access log of every read), with every sink's
    /// projector running; on first run, creates the embedded ledger and an admin token
    Serve(ServeArgs),
    /// Print a shell completion script: `sledger completions bash > /etc/bash_completion.d/sledger`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `sledger man | man -l -`
    Man,
    /// Issue, list and revoke the API tokens `sledger serve` accepts
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Args)]
pub struct AnchorsArgs {
    #[command(subcommand)]
    pub command: Option<AnchorsCmd>,
}

#[derive(Subcommand)]
pub enum AnchorsCmd {
    /// Accept this ledger as it is, though sinks witnessed a later head (an older copy put
    /// back): recorded in the log; each sink's anchor is replaced on its next projection
    Reset {
        /// Confirm: the events the sinks saw beyond this ledger's head are given up
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on; plain HTTP is refused on anything but loopback
    #[arg(long, default_value = "127.0.0.1:8420", value_name = "ADDR:PORT")]
    pub listen: std::net::SocketAddr,
    /// PEM certificate chain for TLS
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest request body in bytes; larger ones get 413
    #[arg(long, default_value_t = 1 << 20, value_name = "BYTES")]
    pub body_limit: usize,
    /// Longest a request may take
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,
    /// Longest a client may take to send its request headers
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub header_timeout: std::time::Duration,
    /// Requests served at once; more wait
    #[arg(long, default_value_t = 512, value_name = "N")]
    pub max_in_flight: usize,
    /// Connections open at once; more are closed as they come
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_connections: usize,
    /// Longest a connection may stay silent between requests (longer than --request-timeout)
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub idle_timeout: std::time::Duration,
    /// Requests per second per token (bursts of twice that)
    #[arg(long, default_value_t = 1000.0, value_name = "N")]
    pub rate_limit: f64,
    /// The directory sqlite sinks attached through the API must be in (default: the ledger
    /// file's directory)
    #[arg(long, value_name = "DIR")]
    pub sink_dir: Option<PathBuf>,
    /// A host (HOST, or HOST:PORT) that a Vault, or a cloud sink's endpoint=, attached through
    /// the API may be at (repeatable); the clouds' own endpoints need none
    #[arg(long = "sink-host", value_name = "HOST[:PORT]")]
    pub sink_hosts: Vec<String>,
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Issue a token; it is printed once and only its keyed hash is kept
    Create {
        #[arg(long, value_name = "NAME")]
        name: String,
        /// admin, writer, reader or auditor
        #[arg(long, value_name = "ROLE")]
        role: String,
        /// Secret names the token covers, with * wildcards (repeatable), e.g. 'prod/*'
        #[arg(long = "pattern", value_name = "PATTERN", required = true)]
        patterns: Vec<String>,
        /// Expire after this long (e.g. 30d, 12h)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Every token issued, revoked and expired ones included (never the tokens)
    List,
    /// Revoke a token: refused from its next request on
    Revoke { name: String },
}

/// A point of the log: a time or a seq (default: the head).
#[derive(Args)]
pub struct TargetArgs {
    /// The state as of this time (RFC 3339)
    #[arg(long, value_name = "TIME", conflicts_with = "seq")]
    pub at: Option<String>,
    /// The state just after this event
    #[arg(long, value_name = "N")]
    pub seq: Option<u64>,
}

#[derive(Args)]
pub struct ReplayArgs {
    /// An attached standby sink, or a sink URL (a sqlite file is created if missing)
    #[arg(long, value_name = "NAME|URL")]
    pub into: String,
    #[command(flatten)]
    pub target: TargetArgs,
    /// Print the difference; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Only these secrets (their name then or now; repeatable)
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// Print what would change; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct BackupArgs {
    /// Then remove the secrets from the primary sink (reads fall back to the backup;
    /// `sledger restore` puts them back)
    #[arg(long)]
    pub delete_secrets: bool,
    /// Print the difference; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct MigrateArgs {
    /// The new primary: an attached sink, or a URL to attach (with --name)
    #[arg(long, value_name = "NAME|URL")]
    pub to: String,
    /// The name to attach a URL under
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Then remove the secrets from the old primary
    #[arg(long)]
    pub delete_secrets: bool,
    /// Say what would happen; change nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args)]
pub struct DiffArgs {
    /// An attached sink
    pub sink: String,
    /// Compare with the state at this point instead of the head
    #[command(flatten)]
    pub target: TargetArgs,
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// An attached sink
    pub sink: String,
    /// Also overwrite objects that claim a seq beyond the ledger's head (`diff` shows them as
    /// `ahead`: planted in the backend, or written by a newer copy of this ledger that was
    /// lost). They are erased and written again from this ledger
    #[arg(long)]
    pub force_ledger: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Backup,
    Replica,
    Standby,
}

impl From<RoleArg> for sledger::event::SinkRole {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Backup => Self::Backup,
            RoleArg::Replica => Self::Replica,
            RoleArg::Standby => Self::Standby,
        }
    }
}

#[derive(Subcommand)]
pub enum SinkCmd {
    /// Attach a sink: sqlite:///PATH, exec:///PROGRAM?arg=…, memory://NAME (credentials never go in the URL)
    Add {
        name: String,
        url: String,
        /// backup: serves reads when the primary cannot; replica: written, never read;
        /// standby: written by no projector, a target for replays
        #[arg(long, value_enum, default_value_t = RoleArg::Backup)]
        role: RoleArg,
    },
    /// The attached sinks
    List,
    /// Role, checkpoint, lag, last error and parked events of every sink
    Status,
    /// Make a sink the primary; the old primary becomes a backup
    Promote { name: String },
    /// Change a sink's role
    SetRole {
        name: String,
        #[arg(value_enum)]
        role: RoleArg,
    },
    /// Detach a sink (never the primary); its backend is left as it is
    Remove { name: String },
    /// Re-apply a sink's parked events
    Retry { name: String },
    /// Check that a sink is reachable
    Check { name: String },
}

#[derive(Args)]
pub struct ProjectArgs {
    /// Keep projecting new events until interrupted (SIGINT/SIGTERM), then stop cleanly
    #[arg(long)]
    pub follow: bool,
    /// Only this sink
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
    /// Events per batch: each batch is compacted to one write per secret, and the checkpoint
    /// moves once the whole batch is applied
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_events: u64,
}

#[derive(Args)]
pub struct RecoverArgs {
    /// The sink to read, as its URL (e.g. sqlite:///var/lib/sledger/ledger.sink.db)
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The new ledger's primary sink (default: a new sqlite file beside the ledger); the
    /// source is attached as a standby and never written
    #[arg(long, value_name = "URL")]
    pub primary: Option<String>,
}

#[derive(Subcommand)]
pub enum LedgerCmd {
    /// Copy the ledger to a new file while writers keep going (one consistent instant), then
    /// open the copy with the key and verify it; keep it, and the key, somewhere else
    Backup {
        /// The new file (refused if it exists)
        #[arg(long, value_name = "PATH")]
        to: PathBuf,
    },
    /// Copy the whole log into another store (a file, or postgres://…), checking the chain on
    /// both sides; resumes a copy that was cut short. This is how a ledger moves to PostgreSQL
    #[command(
        after_long_help = "Examples:\n  sledger ledger copy --from ~/.local/share/sledger/ledger.db --to postgres://sledger@db.internal/sledger\n  sledger ledger copy --from postgres://sledger@db.internal/sledger --to /backup/ledger.db"
    )]
    Copy {
        /// The ledger to copy [default: --ledger]
        #[arg(long, value_name = "PATH|URL")]
        from: Option<String>,
        /// Where to copy it: a new file or a database without a ledger (or an earlier,
        /// unfinished copy of the same ledger)
        #[arg(long, value_name = "PATH|URL")]
        to: String,
    },
}

#[derive(Args)]
pub struct InitArgs {
    /// Largest allowed secret, measured as its JSON object (16 bytes to 16 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = sledger::validate::DEFAULT_MAX_VALUE_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(16..=16 * 1024 * 1024))]
    pub max_value_bytes: usize,
    /// The primary sink's URL [default: a sqlite file beside the ledger file; a ledger in
    /// PostgreSQL must name one]
    #[arg(long, value_name = "URL")]
    pub primary: Option<String>,
}

impl Default for InitArgs {
    fn default() -> Self {
        InitArgs {
            max_value_bytes: sledger::validate::DEFAULT_MAX_VALUE_BYTES,
            primary: None,
        }
    }
}

/// Where values come from. Values given with --value end up in shell history and `ps`;
/// prefer --value-file or --values-json - for real secrets.
#[derive(Args, Default)]
pub struct ValueArgs {
    /// A value, KEY=VALUE (repeatable)
    #[arg(long = "value", value_name = "KEY=VALUE")]
    pub values: Vec<String>,
    /// A value read from a file, KEY=PATH; PATH - reads stdin (repeatable). One trailing
    /// newline (from `echo` or an editor) is dropped
    #[arg(long = "value-file", value_name = "KEY=PATH")]
    pub value_files: Vec<String>,
    /// A value read from a file exactly as it is, trailing newline included, KEY=PATH
    /// (repeatable)
    #[arg(long = "value-file-raw", value_name = "KEY=PATH")]
    pub raw_value_files: Vec<String>,
    /// A JSON object of string values, from FILE or - for stdin
    #[arg(long, value_name = "FILE")]
    pub values_json: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum SecretCmd {
    /// Create a secret
    #[command(
        after_long_help = "Examples:\n  sledger secret create db/prod --value user=admin --value-file password=./pw.txt --label env=prod\n  echo '{\"token\":\"abc\"}' | sledger secret create api/token --values-json -\n  sledger secret create my-laptop --private --value k=v"
    )]
    Create {
        /// The new secret's name (letters, digits and _ . @ / + = -)
        name: String,
        #[command(flatten)]
        values: ValueArgs,
        /// A label, K=V (repeatable)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Visible only to its owner (the actor)
        #[arg(long)]
        private: bool,
    },
    /// Print a secret's values (latest, a version, or as of a time)
    #[command(
        after_long_help = "Examples:\n  sledger secret get db/prod\n  sledger secret get db/prod --key password      # just the value, for $(…)\n  sledger secret get db/prod --version 1\n  sledger secret get db/prod --at 2026-11-28T12:00:00Z"
    )]
    Get {
        /// The secret's name (or id:UUID)
        name: String,
        /// Print only this key's value, raw
        #[arg(long, value_name = "K")]
        key: Option<String>,
        /// A past version (1 is the first)
        #[arg(long, value_name = "N", conflicts_with = "at")]
        version: Option<u32>,
        /// RFC 3339 time, e.g. 2026-11-28T12:00:00Z
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Where to read from [default: primary, then backup, then the ledger]
        #[arg(long, value_enum, conflicts_with_all = ["version", "at"])]
        from: Option<FromArg>,
    },
    /// Change some values or labels; keys not named keep their values
    Update {
        /// The secret's name (or id:UUID)
        name: String,
        #[command(flatten)]
        values: ValueArgs,
        /// Remove this value key (repeatable)
        #[arg(long = "remove-key", value_name = "K")]
        remove_keys: Vec<String>,
        /// Set a label, K=V (repeatable)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// Remove a label (repeatable)
        #[arg(long = "remove-label", value_name = "K")]
        remove_labels: Vec<String>,
    },
    /// Rename a secret (its id, and so its sink objects, stay the same)
    Rename {
        /// Its name now
        old: String,
        /// Its new name
        new: String,
    },
    /// Soft-delete a secret (recoverable with undelete)
    Delete {
        /// The secret's name (or id:UUID)
        name: String,
    },
    /// Bring back a soft-deleted secret
    Undelete {
        /// The deleted secret's name
        name: String,
        /// Bring it back under this name (its own is taken by a secret created since)
        #[arg(long = "as", value_name = "NEW")]
        as_name: Option<String>,
    },
    /// Crypto-shred a secret: every version becomes undecryptable, for good
    Purge {
        /// The secret's name (or id:UUID)
        name: String,
        /// Confirm that this cannot be undone
        #[arg(long)]
        yes: bool,
    },
    /// List secrets (metadata only)
    #[command(
        after_long_help = "Examples:\n  sledger secret list --label env=prod\n  sledger secret list --prefix db/ --limit 100\n  sledger secret list --limit 100 --after db/prod   # the next page"
    )]
    List {
        /// Only secrets with this label, K=V (repeatable; all must match)
        #[arg(long = "label", value_name = "K=V")]
        labels: Vec<String>,
        /// List soft-deleted secrets instead of live ones
        #[arg(long)]
        deleted: bool,
        /// Only names starting with this
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// One page of at most N secrets (the next page: --after the last name shown)
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Start after this name (the last one of the previous page)
        #[arg(long, value_name = "NAME")]
        after: Option<String>,
    },
    /// Every change to one secret: versions, actors, keys changed, fingerprints
    History {
        /// The secret's name (or id:UUID)
        name: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FromArg {
    Primary,
    Backup,
    Ledger,
}

#[derive(Args)]
pub struct LogArgs {
    /// Only events of this secret
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
    /// Only events of this type (e.g. secret.updated)
    #[arg(long = "type", value_name = "T")]
    pub event_type: Option<String>,
    /// Only events at or after this RFC 3339 time
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events at or before this RFC 3339 time
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only events after this seq (a range read: the next page after the last seq shown)
    #[arg(long, value_name = "SEQ")]
    pub after_seq: Option<u64>,
    /// At most N events: the first N from --since or --after-seq, else the last N
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// The last N matching events (read back from the end)
    #[arg(long, value_name = "N", conflicts_with = "limit")]
    pub tail: Option<usize>,
    /// Keep printing new events as they are appended (stop with Ctrl-C)
    #[arg(long)]
    pub follow: bool,
    /// The access log instead: value reads, denied requests and failed authentications (with
    /// --after-seq, --limit, --tail and --follow as for events)
    #[arg(long, conflicts_with_all = ["secret", "event_type", "since", "until"])]
    pub access: bool,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Save the verified head (seq, hash) to FILE, to check later with --anchor
    #[arg(long, value_name = "FILE")]
    pub save_anchor: Option<PathBuf>,
    /// Let --save-anchor replace a file that is not this ledger's anchor
    #[arg(long, requires = "save_anchor")]
    pub force: bool,
    /// Also check a saved anchor: catches a truncated or rewritten tail
    #[arg(long, value_name = "FILE")]
    pub anchor: Option<PathBuf>,
    /// Rebuild the derived catalog and snapshots from the log first (after an edit outside sledger)
    #[arg(long)]
    pub rebuild_catalog: bool,
}

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Re-wrap every data key under a new master key; old events stay readable
    Rotate {
        /// Where to write the new key when the current one comes from SLEDGER_MASTER_KEY
        #[arg(long, value_name = "PATH")]
        new_key_file: Option<PathBuf>,
    },
    /// Move the master key (unchanged) into a KMS, between KMS keys, or out into a key file;
    /// crash-safe, and recorded in the log
    #[command(
        after_long_help = "Examples:\n  sledger key migrate --to 'vault-transit://vault.internal:8200/transit/sledger'\n  sledger key migrate --to aws-kms://eu-west-1/alias/sledger\n  sledger key migrate --to file:///safe/ledger.key"
    )]
    Migrate {
        /// The new holder: a KMS key URI, or file:///PATH (a new file)
        #[arg(long, value_name = "URI")]
        to: String,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportFormat {
    /// An array of {"name", "values", "labels"?, "private"?} objects
    Json,
    /// One such object per line
    Jsonl,
    /// KEY=VALUE lines (a .env file): one secret, named by --name, whose keys are the variables
    Dotenv,
}

#[derive(Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["file", "from"]))]
pub struct ImportArgs {
    /// A file of secrets
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Adopt the secrets a backend already holds (vault://, aws-sm://, gcp-sm://, azure-kv://
    /// URL), under their names there; sledger's own objects in it are left out
    #[arg(long, value_name = "URL", requires = "which")]
    pub from: Option<String>,
    /// With --from: every secret in the backend
    #[arg(long, group = "which", requires = "from")]
    pub all: bool,
    /// With --from: the secrets whose names start with PREFIX
    #[arg(long, value_name = "PREFIX", group = "which", requires = "from")]
    pub prefix: Option<String>,
    /// List what would be imported; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Input format [default: from the file extension (.json, .env), else jsonl]
    #[arg(long = "input-format", value_enum)]
    pub input_format: Option<ImportFormat>,
    /// The secret a dotenv file becomes
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Secrets per transaction
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
}
