//! `sledger serve` and `sledger token …`

use anyhow::Result;
use serde_json::{json, Value};
use sledger::identity::Role;
use sledger::server::{serve as run_server, RateLimit, ServeOptions};
use sledger::LedgerHandle;

use crate::cli::{ServeArgs, TokenCmd};
use crate::context::Context;
use crate::output::{self, outln};

pub fn serve(ctx: &Context, args: ServeArgs) -> Result<()> {
    let local = ctx.local("serve")?;
    let mut options = ServeOptions::new(args.listen);
    options.tls = args.tls_cert.zip(args.tls_key);
    options.body_limit = args.body_limit;
    options.request_timeout = args.request_timeout;
    options.header_timeout = args.header_timeout;
    options.max_in_flight = args.max_in_flight;
    options.max_connections = args.max_connections;
    options.idle_timeout = args.idle_timeout;
    options.rate_limit = RateLimit {
        per_second: args.rate_limit,
        burst: args.rate_limit * 2.0,
    };
    options.reload_key = Some(local.key_reloader());
    options.sink_dir = args.sink_dir;
    options.sink_hosts = args.sink_hosts;
    options.check()?;
    if !local.ledger.exists() {
        crate::keys::init(ctx, crate::cli::InitArgs::default())?;
        issue(ctx, "admin", Role::Admin, vec!["*".into()], None)?;
    }
    let master = local.master_key()?;
    if local.open_to_write()?.tokens()?.all().next().is_none() {
        eprintln!(
            "note: no token has been issued, so every request will be refused; \
             `sledger token create --name admin --role admin --pattern '*'` makes the first one"
        );
    }
    // Reads and sink calls run on the blocking pool; a cap keeps a burst of clients from
    // starting hundreds of threads (each with its own SQLite caches).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(64)
        .build()?;
    let json = ctx.json();
    runtime.block_on(async move {
        let handle = LedgerHandle::open(local.ledger.clone(), master)?;
        let shutdown = crate::context::terminated();
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let ready = move |address: std::net::SocketAddr| {
            if json {
                output::json_line(&json!({"listening": format!("{scheme}://{address}")}));
            } else {
                outln!("listening on {scheme}://{address}");
            }
        };
        run_server(handle, options, ready, shutdown).await
    })?;
    Ok(())
}

/// Issue a token (locally with the master key, or through the server) and print it once.
fn issue(
    ctx: &Context,
    name: &str,
    role: Role,
    patterns: Vec<String>,
    expires: Option<std::time::Duration>,
) -> Result<()> {
    let doc = ctx.session.issue_token(name, role, patterns.clone(), expires)?;
    if ctx.json() {
        output::json_line(&doc);
    } else {
        eprintln!(
            "token {name} ({role} on {}) issued; it is shown once, so store it now (e.g. in a 0600 file for --token-file):",
            patterns.join(", ")
        );
        outln!("{}", doc["token"].as_str().unwrap_or_default());
    }
    Ok(())
}

pub fn token(ctx: &Context, cmd: TokenCmd) -> Result<()> {
    match cmd {
        TokenCmd::Create {
            name,
            role,
            patterns,
            expires,
        } => issue(ctx, &name, role.parse()?, patterns, expires),
        TokenCmd::List => {
            let tokens = ctx.session.tokens()?;
            if ctx.json() {
                output::json_line(&tokens);
                return Ok(());
            }
            let now = sledger::ledger::now_ms();
            let time = |v: &Value| v.as_i64().map(output::time);
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            let mut t = output::table(&["NAME", "ROLE", "PATTERNS", "ISSUED", "BY", "EXPIRES", "STATE"]);
            for token in &tokens {
                let expires = token["expires_at"].as_i64();
                let state = match (time(&token["revoked_at"]), expires) {
                    (Some(at), _) => format!("revoked {at}"),
                    (None, Some(at)) if at <= now => "expired".into(),
                    _ => "active".into(),
                };
                let patterns: Vec<String> = token["patterns"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect();
                t.add_row(vec![
                    text(&token["name"]),
                    text(&token["role"]),
                    patterns.join(","),
                    time(&token["issued_at"]).unwrap_or_default(),
                    text(&token["issued_by"]),
                    expires.map(output::time).unwrap_or_else(|| "never".into()),
                    state,
                ]);
            }
            outln!("{t}");
            Ok(())
        }
        TokenCmd::Revoke { name } => {
            ctx.session.revoke_token(&name)?;
            if ctx.json() {
                output::json_line(&json!({"name": name, "result": "revoked"}));
            } else {
                outln!("revoked token {name}");
            }
            Ok(())
        }
    }
}
