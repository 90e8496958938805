//! The `sledger` command: parse, call the library, render. Errors are printed and mapped to
//! exit codes in one place, [`exit::report`].

mod audit;
mod cli;
mod context;
mod exit;
mod import;
mod keys;
mod output;
mod replay;
mod secret;
mod serve;
mod sinks;
mod verify;

use clap::{CommandFactory, FromArgMatches};

// Verification hands events between threads; glibc's allocator is slow to free memory
// allocated on another thread, mimalloc is not. Built without transparent huge pages
// (`no_thp`): with them every touched 2 MiB of its arena stays resident, which doubled the
// server's peak RSS under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use cli::{Cli, Commands};
use context::Context;

fn main() {
    Context::take_env_key();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_tracing(cli.global.color);
    // Neither needs a ledger, a key or a server.
    match &cli.command {
        Commands::Completions { .. } | Commands::Man => {
            // Rendered whole first: writing straight to a closed pipe (`| head`) would panic.
            let mut text = Vec::new();
            match &cli.command {
                Commands::Completions { shell } => {
                    clap_complete::generate(*shell, &mut Cli::command(), "sledger", &mut text)
                }
                _ => clap_mangen::Man::new(Cli::command())
                    .render(&mut text)
                    .expect("writing to memory cannot fail"),
            }
            use std::io::Write as _;
            if let Err(e) = std::io::stdout().write_all(&text) {
                output::stdout_failed(e);
            }
            return;
        }
        _ => {}
    }
    let typed = |arg: &str| {
        matches!(
            matches.value_source(arg),
            Some(clap::parser::ValueSource::CommandLine)
        )
    };
    let actor_from_command_line = typed("actor");
    // A server opens its own ledger with its own key: these would be ignored, and the command
    // would act on another ledger than the one named.
    if let Some(flag) = ["ledger", "key_file", "master_key"]
        .into_iter()
        .find(|a| cli.global.server.is_some() && typed(a))
    {
        let err = exit::usage(format!(
            "--{} names a ledger on this host, but --server (or SLEDGER_SERVER) sends the command to a server, which uses its own; drop one of them",
            flag.replace('_', "-")
        ));
        std::process::exit(exit::report(&err, cli.global.format == cli::Format::Json));
    }
    let ctx = match Context::new(&cli.global) {
        Ok(ctx) => ctx,
        Err(err) => std::process::exit(exit::report(&err, cli.global.format == cli::Format::Json)),
    };
    let result = match cli.command {
        Commands::Init(args) => keys::init(&ctx, args),
        Commands::Secret(cmd) => secret::run(&ctx, cmd),
        Commands::Log(args) => audit::run(&ctx, args, actor_from_command_line),
        Commands::Verify(args) => verify::run(&ctx, args),
        Commands::Anchors(args) => verify::anchors(&ctx, args),
        Commands::Key(cmd) => keys::run(&ctx, cmd),
        Commands::Ledger(cmd) => verify::ledger(&ctx, cmd),
        Commands::Recover(args) => verify::recover(&ctx, args),
        Commands::Import(args) => import::run(&ctx, args),
        Commands::Sink(cmd) => sinks::run(&ctx, cmd),
        Commands::Project(args) => sinks::project_cmd(&ctx, args),
        Commands::Replay(args) => replay::replay(&ctx, args),
        Commands::Restore(args) => replay::restore(&ctx, args),
        Commands::Backup(args) => replay::backup(&ctx, args),
        Commands::Migrate(args) => replay::migrate(&ctx, args),
        Commands::Diff(args) => replay::diff(&ctx, args),
        Commands::Reconcile(args) => replay::reconcile(&ctx, args),
        Commands::Serve(args) => serve::serve(&ctx, args),
        Commands::Token(cmd) => serve::token(&ctx, cmd),
        Commands::Completions { .. } | Commands::Man => unreachable!("handled before the context"),
    };
    if let Err(err) = result {
        std::process::exit(exit::report(&err, ctx.json()));
    }
}

/// Logs go to stderr. `SLEDGER_LOG` (a level: `debug`, `trace`, …) sets sledger's own
/// targets only, which never log a value. Dependencies stay off unless
/// `SLEDGER_LOG_DEPENDENCIES` (a full filter) says otherwise: some of them (the AWS SDK at
/// trace) log request bodies, which hold secret values, so that switch is documented as unsafe.
fn init_tracing(color: cli::Color) {
    use std::io::IsTerminal as _;
    let ansi = match color {
        cli::Color::Always => true,
        cli::Color::Never => false,
        cli::Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let level = std::env::var("SLEDGER_LOG")
        .ok()
        .and_then(|l| l.trim().parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    let dependencies = std::env::var("SLEDGER_LOG_DEPENDENCIES").unwrap_or_else(|_| "off".into());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{dependencies},sledger={level}"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("off,sledger={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}
