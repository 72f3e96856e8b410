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

        /// Where to write the events, one JSON object per line (overwritten).
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

    /// List every hook linked into this binary: event, name, module, file:line, priority, timeout.
    Hooks {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the command line, runs the command, and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
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
    tracing::info!(hooks = registry.len(), "hooks linked");

    match cli.command {
        Cmd::Hooks { json } => print_hooks(registry, json),
        Cmd::TelegramUpdates { input, first_update_id } => {
            let file = std::fs::File::open(&input).with_context(|| format!("opening {}", input.display()))?;
            let stdout = std::io::stdout().lock();
            let (written, skipped) =
                updates::convert(std::io::BufReader::new(file), std::io::BufWriter::new(stdout), first_update_id)?;
            eprintln!("{written} updates written, {skipped} lines skipped");
            Ok(())
        }
        Cmd::Replay { input, events_out, strict, no_progress, summary_json, session } => {
            let (settings, file) = session.resolve()?;
            let events_out = events_out
                .or(file.events_out)
                .context("--events-out is required (or `events_out` in the config file)")?;
            replay::check_events_out(&events_out)?;
            let audit = Arc::new(
                AuditLog::create(&events_out, settings.audit)
                    .with_context(|| format!("creating the events file {}", events_out.display()))?,
            );
            let mut state = State::new();
            state.insert(Metrics::default());
            state.insert(Arc::clone(&audit));
            if let Some(dir) = &settings.memory_dir {
                std::fs::create_dir_all(dir).with_context(|| format!("creating --memory-dir {}", dir.display()))?;
                state.insert(gateway_plugin_memory::MemoryDir(dir.clone()));
            }
            let dispatcher =
                Arc::new(Dispatcher::with_config(Registry::from_inventory(), state, DispatchConfig::default()));
            let options = replay::ReplayOptions { input, strict, progress: !no_progress, max_reported: 100 };
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
