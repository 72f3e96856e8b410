//! The command line: `replay`, `serve`, `hooks`, `telegram-updates`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hooks_core::State;
use hooks_core::dispatch::{DispatchConfig, Dispatcher};
use hooks_core::registry::Registry;

use crate::config::SessionArgs;
use crate::hooks::audit::AuditLog;
use crate::hooks::metrics::Metrics;
use crate::{replay, updates};

/// A chat gateway on hooks-core: typed hooks, exactly one SessionEnd per session.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `hooks_core=debug`. RUST_LOG works too.
    #[arg(long, global = true, value_name = "FILTER", default_value = "warn")]
    log: String,

    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Replay recorded traffic (JSON Lines) through the session lifecycle and write the events file.
    ///
    /// Each line is a chat record {"ts","chat_id","user_id","text","platform"?} or a Telegram Bot API
    /// Update. Bad lines are reported on stderr with their line number and skipped (see --strict).
    /// Sessions close by idle expiry, daily reset, /new and /reset, and at the end of the input
    /// (shutdown). Prints a summary at the end.
    Replay {
        /// The input file, JSON Lines (`-` for standard input).
        input: PathBuf,

        /// Where to write the events, one JSON object per line (an existing file is replaced by a new one).
        #[arg(long, value_name = "PATH")]
        events_out: Option<PathBuf>,

        /// Stop with an error at the first bad line instead of skipping it.
        #[arg(long)]
        strict: bool,

        /// Never draw the progress bar (it is drawn only when stderr is a terminal).
        #[arg(long)]
        no_progress: bool,

        /// Also write the summary as JSON to this file.
        #[arg(long, value_name = "PATH")]
        summary_json: Option<PathBuf>,

        /// Where sessions live: `memory` (default) or `sqlite:PATH`, a new database that records every
        /// session and event, committed in batches of at least --batch records and delivered after each
        /// commit, while the next batch is being read.
        #[arg(long, value_name = "STORE", default_value = "memory")]
        store: crate::durable::StoreSpec,

        /// Records per batch with --store sqlite:PATH. Each batch is handed to the store as soon as it
        /// is read; while the store is busy, batches queue up and are committed together in one
        /// transaction (group commit), up to 8 batches in flight. Command hooks decide inline, as in
        /// `serve`, possibly before the events of batches still committing are delivered.
        #[arg(long, value_name = "N", default_value_t = 512)]
        batch: usize,

        /// SQLite durability with --store sqlite:PATH (see `serve --help`).
        #[arg(long, value_enum, value_name = "MODE", default_value_t = crate::durable::SyncArg::Full)]
        synchronous: crate::durable::SyncArg,

        #[command(flatten)]
        session: SessionArgs,
    },

    /// Serve live traffic over HTTP: a Telegram webhook and a generic message endpoint.
    ///
    /// Routes: POST /v1/messages {"chat_id","user_id","text","platform"?}, POST /telegram/webhook (a
    /// Bot API Update), GET /healthz, GET /metrics (Prometheus). A message's time is its arrival time.
    /// SIGINT or SIGTERM shuts down gracefully: every open session ends with `shutdown` and its
    /// SessionEnd is delivered before the process exits.
    Serve {
        /// The address to listen on [default: 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,

        /// The data directory: the events file defaults to DIR/events.jsonl [default: gateway-data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,

        /// Append the events here (one JSON object per line) [default: DATA_DIR/events.jsonl].
        #[arg(long, value_name = "PATH")]
        events_out: Option<PathBuf>,

        /// Require this secret in the X-Telegram-Bot-Api-Secret-Token header of webhook calls.
        #[arg(long, env = "TELEGRAM_WEBHOOK_SECRET", value_name = "SECRET", hide_env_values = true)]
        telegram_secret: Option<String>,

        /// The largest accepted request body, in bytes [default: 1048576].
        #[arg(long, value_name = "BYTES")]
        body_limit: Option<usize>,

        /// How long shutdown waits for hooks to deliver the last events [default: 10s].
        #[arg(long, value_name = "DUR", value_parser = crate::config::parse_duration)]
        drain_timeout: Option<std::time::Duration>,

        /// Where sessions live: `sqlite:PATH` (durable) or `memory` (lost on exit)
        /// [default: sqlite:DATA_DIR/sessions.sqlite3].
        #[arg(long, value_name = "STORE")]
        store: Option<crate::durable::StoreSpec>,

        /// SQLite durability: `full` flushes every commit to disk before replying; `normal` survives a
        /// process crash but may lose the last commits on power loss [default: full].
        #[arg(long, value_enum, value_name = "MODE", default_value_t = crate::durable::SyncArg::Full)]
        synchronous: crate::durable::SyncArg,

        /// Delivery attempts per event before it becomes a dead letter (see `dead-letters`).
        #[arg(long, value_name = "N", default_value_t = 5)]
        max_attempts: u32,

        /// Cap the session database at N pages of 4 KiB (a quota: writes beyond it fail as on a full
        /// disk). For tests and constrained hosts.
        #[arg(long, value_name = "N", hide = true)]
        sqlite_max_pages: Option<u64>,

        /// The welcome the memory plugin queues for each new session.
        #[arg(long, value_name = "TEXT", default_value = "Hi! I am the example gateway; /help lists the commands.")]
        welcome: String,

        #[command(flatten)]
        session: SessionArgs,
    },

    /// Build replay input from a Telegram payload collection (data/telegram_payloads_public.jsonl):
    /// one Bot API Update per line on stdout, bare messages wrapped into Updates.
    TelegramUpdates {
        /// The payload collection, `{"kind": "update"|"message", "payload": …}` per line.
        input: PathBuf,

        /// The update_id given to the first wrapped message (the next ones count up).
        #[arg(long, default_value_t = 1_000_000)]
        first_update_id: i64,
    },

    /// Events whose handlers kept failing (the dead-letter state of the session database).
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },

    /// List every hook linked into this binary: event, name, module, file:line, priority, timeout.
    Hooks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DeadLetterAction {
    /// List the dead letters: outbox position, event, event id, attempts, key, last errors.
    List {
        /// The data directory whose DIR/sessions.sqlite3 to read [default: gateway-data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,

        /// The database file (instead of the one in --data-dir).
        #[arg(long, value_name = "sqlite:PATH")]
        store: Option<crate::durable::StoreSpec>,

        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue dead letters for delivery again (all, or the given outbox positions); a gateway delivers
    /// them when it next starts on the database.
    Retry {
        /// Outbox positions (the `seq` column of `list`); none: every dead letter.
        seq: Vec<u64>,

        /// The data directory whose DIR/sessions.sqlite3 to change [default: gateway-data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,

        /// The database file (instead of the one in --data-dir).
        #[arg(long, value_name = "sqlite:PATH")]
        store: Option<crate::durable::StoreSpec>,
    },
}

/// The database a `dead-letters` command works on.
fn dead_letter_db(data_dir: Option<PathBuf>, store: Option<crate::durable::StoreSpec>) -> Result<PathBuf> {
    match store {
        Some(crate::durable::StoreSpec::Sqlite(path)) => Ok(path),
        Some(crate::durable::StoreSpec::Memory) => anyhow::bail!("an in-memory store keeps no dead letters"),
        None => Ok(data_dir.unwrap_or_else(|| PathBuf::from("gateway-data")).join(crate::durable::DB_FILE)),
    }
}

/// Parses the command line, runs the command, and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colour).init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let registry = Registry::global();
    // Every hook this binary is built to have: a plugin dependency that is never named is not linked.
    let mut expected =
        vec!["gateway_example::hooks::audit::audit_session_start", "gateway_example::hooks::audit::audit_session_end"];
    expected.extend_from_slice(gateway_plugin_memory::HOOKS);
    registry.require(&expected)?;
    tracing::info!(count = registry.len(), hooks = %registry.describe(), "hooks linked");

    match cli.command {
        Cmd::Hooks { json } => print_hooks(registry, json),
        Cmd::DeadLetters { action } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match action {
                DeadLetterAction::List { data_dir, store, json } => {
                    rt.block_on(crate::durable::list_dead_letters(&dead_letter_db(data_dir, store)?, json))
                }
                DeadLetterAction::Retry { seq, data_dir, store } => {
                    rt.block_on(crate::durable::retry_dead_letters(&dead_letter_db(data_dir, store)?, seq))
                }
            }
        }
        Cmd::Serve {
            listen,
            data_dir,
            events_out,
            telegram_secret,
            body_limit,
            drain_timeout,
            store,
            synchronous,
            max_attempts,
            sqlite_max_pages,
            welcome,
            session,
        } => {
            let (settings, file) = session.resolve()?;
            let data_dir = data_dir.or(file.data_dir).unwrap_or_else(|| PathBuf::from("gateway-data"));
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("creating --data-dir {}", data_dir.display()))?;
            let listen = listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".to_owned());
            let listen: std::net::SocketAddr = listen
                .parse()
                .with_context(|| format!("--listen {listen:?} is not an address such as 127.0.0.1:8080"))?;
            let drain_timeout = match (drain_timeout, &file.drain_timeout) {
                (Some(d), _) => d,
                (None, Some(s)) => {
                    crate::config::parse_duration(s).map_err(|e| anyhow::anyhow!("config `drain_timeout`: {e}"))?
                }
                (None, None) => std::time::Duration::from_secs(10),
            };
            let events_out = events_out.or(file.events_out).unwrap_or_else(|| data_dir.join("events.jsonl"));
            let audit = Arc::new(
                AuditLog::append(&events_out, settings.audit)
                    .with_context(|| format!("opening the events file {}", events_out.display()))?,
            );
            let mut state = hook_state(&settings, Arc::clone(&audit))?;
            state.insert(gateway_plugin_memory::Greeter::new(welcome));
            let dispatcher =
                Arc::new(Dispatcher::with_config(Registry::from_inventory(), state, DispatchConfig::default()));
            let options = crate::serve::ServeOptions {
                listen,
                policy: settings.policy.clone(),
                scope: settings.scope,
                telegram_secret: telegram_secret.or(file.telegram_secret),
                body_limit: body_limit.or(file.body_limit).unwrap_or(1 << 20),
                drain_timeout,
                store: store
                    .unwrap_or_else(|| crate::durable::StoreSpec::Sqlite(data_dir.join(crate::durable::DB_FILE))),
                synchronous: synchronous.into(),
                max_attempts: max_attempts.max(1),
                max_pages: sqlite_max_pages,
                data_dir,
            };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(options.listen)
                    .await
                    .with_context(|| format!("listening on {}", options.listen))?;
                // Signal handlers first: from the moment it says it listens, SIGTERM shuts down cleanly.
                let stop = crate::serve::shutdown_signal();
                eprintln!("gateway-example listening on http://{}", listener.local_addr()?);
                crate::serve::run(listener, options, dispatcher, stop).await
            })?;
            audit.finish().context("finishing the events file")?;
            eprintln!(
                "shut down: {} sessions closed, {}",
                report.sessions_closed,
                if report.drained {
                    "every event delivered".to_owned()
                } else {
                    format!("{} events undelivered", report.undelivered.len())
                }
            );
            Ok(())
        }
        Cmd::TelegramUpdates { input, first_update_id } => {
            let file = std::fs::File::open(&input).with_context(|| format!("opening {}", input.display()))?;
            let stdout = std::io::stdout().lock();
            let (written, skipped) =
                updates::convert(std::io::BufReader::new(file), std::io::BufWriter::new(stdout), first_update_id)?;
            eprintln!("{written} updates written, {skipped} lines skipped");
            Ok(())
        }
        Cmd::Replay { input, events_out, strict, no_progress, summary_json, store, batch, synchronous, session } => {
            let (settings, file) = session.resolve()?;
            let events_out = events_out
                .or(file.events_out)
                .context("--events-out is required (or `events_out` in the config file)")?;
            replay::check_events_out(&events_out)?;
            let audit = Arc::new(
                AuditLog::create(&events_out, settings.audit)
                    .with_context(|| format!("creating the events file {}", events_out.display()))?,
            );
            let state = hook_state(&settings, Arc::clone(&audit))?;
            let dispatcher =
                Arc::new(Dispatcher::with_config(Registry::from_inventory(), state, DispatchConfig::default()));
            let store = match store {
                crate::durable::StoreSpec::Memory => None,
                crate::durable::StoreSpec::Sqlite(path) => {
                    Some(crate::durable::DurableOptions { path, batch: batch.max(1), synchronous: synchronous.into() })
                }
            };
            let options = replay::ReplayOptions { input, strict, progress: !no_progress, max_reported: 100, store };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let mut summary = rt.block_on(replay::run(&options, &settings, dispatcher))?;
            summary.events_written = audit.finish().context("finishing the events file")?;
            println!("{summary}");
            if let Some(path) = summary_json {
                std::fs::write(&path, serde_json::to_string_pretty(&summary)? + "\n")
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
    }
}

/// The state every hook of this binary reads: metrics, the events file, the memory directory.
fn hook_state(settings: &crate::config::Settings, audit: Arc<AuditLog>) -> Result<State> {
    let mut state = State::new();
    state.insert(Metrics::default());
    state.insert(audit);
    state.insert(crate::hooks::policy::CommandPolicy { denied: settings.deny_commands.clone() });
    if let Some(dir) = &settings.memory_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating --memory-dir {}", dir.display()))?;
        state.insert(gateway_plugin_memory::MemoryDir(dir.clone()));
    }
    Ok(state)
}

fn print_hooks(registry: &Registry, json: bool) -> Result<()> {
    let metas = registry.metas();
    if json {
        println!("{}", serde_json::to_string_pretty(&metas)?);
        return Ok(());
    }
    println!("{:<18} {:<24} {:<44} {:>8} {:>8}  source", "event", "hook", "module", "priority", "timeout");
    for m in metas {
        let timeout = m.timeout().map_or_else(|| "default".to_owned(), |t| humantime::format_duration(t).to_string());
        println!(
            "{:<18} {:<24} {:<44} {:>8} {:>8}  {}:{}",
            m.event(),
            m.name(),
            m.module_path(),
            m.priority(),
            timeout,
            m.file(),
            m.line()
        );
    }
    Ok(())
}
