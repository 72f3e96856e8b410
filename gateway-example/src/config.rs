//! Command-line flags and the optional TOML configuration file. A flag overrides the file; the file
//! overrides the defaults.
//!
//! ```toml
//! # gateway.toml: every key is optional
//! idle_timeout = "30m"        # 90s, 30m, 2h, 1d
//! daily_reset = "04:00"       # HH:MM
//! daily_reset_tz = "UTC"      # or an IANA zone such as "Europe/Berlin"
//! sweep_interval = "1m"       # absent: exact idle timers
//! session_scope = "chat"      # chat | user
//! transcript_limit = 1000     # messages kept per session for SessionEnd hooks
//! audit = "all"               # all | sessions
//! events_out = "events.jsonl"
//! memory_dir = "memory"
//! deny_commands = ["reset"]  # the command policy hook denies these
//! listen = "127.0.0.1:8080"   # serve only
//! data_dir = "data"           # serve only
//! telegram_secret = "s3cret"  # serve only
//! body_limit = 1048576        # serve only, bytes
//! drain_timeout = "10s"       # serve only
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hooks_core::event::SessionKey;
use hooks_core::lifecycle::{DailyReset, Policy};
use serde::Deserialize;

use crate::hooks::audit::AuditLevel;

/// How messages map to sessions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionScope {
    /// One session per chat: key (platform, chat id).
    #[default]
    Chat,
    /// One session per user in each chat: key (platform, chat id, user id).
    User,
}

impl SessionScope {
    /// The session key of a message in this scope.
    pub fn key(self, platform: &str, chat_id: &str, user_id: &str) -> SessionKey {
        match self {
            SessionScope::Chat => SessionKey::chat(platform, chat_id),
            SessionScope::User => SessionKey::user(platform, chat_id, user_id),
        }
    }
}

/// Parses `90s`, `30m`, `2h`, `1d`, `1h30m`, `500ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}; write a duration such as 90s, 30m, 2h or 1d"))
        .and_then(|d| if d.is_zero() { Err("the duration must be greater than zero".into()) } else { Ok(d) })
}

/// Parses `HH:MM` (24-hour).
pub fn parse_time_of_day(s: &str) -> Result<(u8, u8), String> {
    let err = || format!("{s:?} is not a time of day; write HH:MM, e.g. 04:00");
    let (h, m) = s.trim().split_once(':').ok_or_else(err)?;
    let (h, m): (u8, u8) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
    if h > 23 || m > 59 || s.trim().len() != 5 {
        return Err(err());
    }
    Ok((h, m))
}

/// The session policy flags, shared by `replay` and `serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct SessionArgs {
    /// Close a session after this long without a message [default: 30m].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Close every open session daily at this time of day (HH:MM, in --daily-reset-tz) [default: none].
    #[arg(long, value_name = "HH:MM", value_parser = parse_time_of_day)]
    pub daily_reset: Option<(u8, u8)>,

    /// The time zone of --daily-reset: UTC or an IANA name such as Europe/Berlin [default: UTC].
    #[arg(long, value_name = "ZONE")]
    pub daily_reset_tz: Option<String>,

    /// Notice idle expiry only at multiples of this interval since the Unix epoch, instead of at exact
    /// deadlines; a message for a session found past its deadline then closes it with auto_reset
    /// [default: exact timers].
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub sweep_interval: Option<Duration>,

    /// One session per chat, or per user in each chat [default: chat].
    #[arg(long, value_enum, value_name = "SCOPE")]
    pub session_scope: Option<SessionScope>,

    /// The most messages kept per session for SessionEnd hooks (older ones are dropped) [default: 1000].
    #[arg(long, value_name = "N")]
    pub transcript_limit: Option<usize>,

    /// Which events the audit hook writes to the events file [default: all].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub audit: Option<AuditLevel>,

    /// Write a summary of each closed session to DIR/<session_id>.md (the memory plugin) [default: off].
    #[arg(long, value_name = "DIR")]
    pub memory_dir: Option<PathBuf>,

    /// Deny this command (name without the slash, e.g. `reset`); the user is told and nothing is
    /// routed. Repeat for several.
    #[arg(long = "deny-command", value_name = "NAME")]
    pub deny_commands: Vec<String>,

    /// Read settings from this TOML file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The configuration file's keys (see the module docs).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`SessionArgs::idle_timeout`].
    pub idle_timeout: Option<String>,
    /// See [`SessionArgs::daily_reset`].
    pub daily_reset: Option<String>,
    /// See [`SessionArgs::daily_reset_tz`].
    pub daily_reset_tz: Option<String>,
    /// See [`SessionArgs::sweep_interval`].
    pub sweep_interval: Option<String>,
    /// See [`SessionArgs::session_scope`].
    pub session_scope: Option<SessionScope>,
    /// See [`SessionArgs::transcript_limit`].
    pub transcript_limit: Option<usize>,
    /// See [`SessionArgs::audit`].
    pub audit: Option<AuditLevel>,
    /// The events file.
    pub events_out: Option<PathBuf>,
    /// See [`SessionArgs::memory_dir`].
    pub memory_dir: Option<PathBuf>,
    /// See [`SessionArgs::deny_commands`]; flags add to this list.
    pub deny_commands: Option<Vec<String>>,
    /// `serve`: the address to listen on.
    pub listen: Option<String>,
    /// `serve`: the data directory.
    pub data_dir: Option<PathBuf>,
    /// `serve`: the Telegram webhook secret.
    pub telegram_secret: Option<String>,
    /// `serve`: the largest accepted request body, in bytes.
    pub body_limit: Option<usize>,
    /// `serve`: how long shutdown waits for hooks.
    pub drain_timeout: Option<String>,
}

impl FileConfig {
    /// Reads and parses the file at `path`.
    ///
    /// # Errors
    ///
    /// The file cannot be read, is not TOML, or has an unknown key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// The settings both commands resolve from flags, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The session policy.
    pub policy: Policy,
    /// The session scope.
    pub scope: SessionScope,
    /// The audit level.
    pub audit: AuditLevel,
    /// The memory plugin's directory, if enabled.
    pub memory_dir: Option<PathBuf>,
    /// Commands the command policy hook denies.
    pub deny_commands: Vec<String>,
}

impl SessionArgs {
    /// Loads the config file (if any) and resolves flags over it over the defaults.
    ///
    /// # Errors
    ///
    /// An unreadable or invalid config file, or an invalid value in it.
    pub fn resolve(&self) -> Result<(Settings, FileConfig)> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let from_file = |v: &Option<String>, what: &str| -> Result<Option<Duration>> {
            v.as_deref().map(parse_duration).transpose().map_err(|e| anyhow::anyhow!("config `{what}`: {e}"))
        };
        let mut policy = Policy::default();
        if let Some(d) = self.idle_timeout.or(from_file(&file.idle_timeout, "idle_timeout")?) {
            policy.idle_timeout = d;
        }
        policy.sweep_interval = self.sweep_interval.or(from_file(&file.sweep_interval, "sweep_interval")?);
        let daily = match (self.daily_reset, &file.daily_reset) {
            (Some(t), _) => Some(t),
            (None, Some(s)) => Some(parse_time_of_day(s).map_err(|e| anyhow::anyhow!("config `daily_reset`: {e}"))?),
            (None, None) => None,
        };
        let tz = self.daily_reset_tz.clone().or(file.daily_reset_tz.clone());
        policy.daily_reset = match (daily, tz) {
            (None, Some(_)) => bail!("--daily-reset-tz needs --daily-reset"),
            (None, None) => None,
            (Some((h, m)), None) => Some(DailyReset::utc(h, m).map_err(|e| anyhow::anyhow!("--daily-reset: {e}"))?),
            (Some((h, m)), Some(zone)) => {
                Some(DailyReset::in_zone(h, m, &zone).map_err(|e| anyhow::anyhow!("--daily-reset-tz {zone:?}: {e}"))?)
            }
        };
        if let Some(n) = self.transcript_limit.or(file.transcript_limit) {
            policy.transcript_limit = n;
        }
        let settings = Settings {
            policy,
            scope: self.session_scope.or(file.session_scope).unwrap_or_default(),
            audit: self.audit.or(file.audit).unwrap_or_default(),
            memory_dir: self.memory_dir.clone().or(file.memory_dir.clone()),
            deny_commands: file
                .deny_commands
                .iter()
                .flatten()
                .chain(&self.deny_commands)
                .map(|c| c.trim_start_matches('/').to_owned())
                .collect(),
        };
        Ok((settings, file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_contract_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").unwrap_err().contains("30m"));
    }

    #[test]
    fn time_of_day_is_strict_hh_mm() {
        assert_eq!(parse_time_of_day("04:30"), Ok((4, 30)));
        assert_eq!(parse_time_of_day("23:59"), Ok((23, 59)));
        for bad in ["24:00", "4:30", "04:60", "0430", "04:30:00", ""] {
            assert!(parse_time_of_day(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "idle_timeout = \"2h\"\nsession_scope = \"user\"\ndaily_reset = \"04:00\"\n").unwrap();
        let args =
            SessionArgs { idle_timeout: Some(Duration::from_secs(60)), config: Some(path), ..Default::default() };
        let (s, _) = args.resolve().unwrap();
        assert_eq!(s.policy.idle_timeout, Duration::from_secs(60));
        assert_eq!(s.scope, SessionScope::User);
        assert!(s.policy.daily_reset.is_some());
    }

    #[test]
    fn unknown_config_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "idle_timout = \"2h\"\n").unwrap();
        let err = SessionArgs { config: Some(path), ..Default::default() }.resolve().unwrap_err();
        assert!(format!("{err:#}").contains("idle_timout"), "{err:#}");
    }
}
