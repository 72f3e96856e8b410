//! The session policy: idle timeout, sweep interval, daily reset, transcript limit.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

/// Nanoseconds in a civil day (the UTC reset repeats every this many nanoseconds).
const DAY_NANOS: i128 = 86_400 * 1_000_000_000;

/// When sessions close, as the replay contract of the design defines it.
///
/// ```
/// use std::time::Duration;
/// use hooks_core::lifecycle::{DailyReset, Policy};
///
/// let policy = Policy {
///     idle_timeout: Duration::from_secs(15 * 60),
///     daily_reset: Some(DailyReset::in_zone(4, 0, "Europe/Berlin")?),
///     ..Policy::default()
/// };
/// # Ok::<(), hooks_core::lifecycle::PolicyError>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// How long a session may go without a message: its idle deadline is its last message's time plus
    /// this. Default: 30 minutes.
    pub idle_timeout: Duration,
    /// `None` (default): exact timers, a session closes with `idle_expiry` at exactly its idle deadline.
    /// `Some(s)`: expiry is noticed only at *sweep instants*, the whole multiples of `s` since the Unix
    /// epoch (UTC); a session closes at the first sweep instant at or after its deadline, unless a message
    /// for its key arrives first (it then closes with `auto_reset`). A zero interval counts as `None`.
    pub sweep_interval: Option<Duration>,
    /// Close every open session once a day at a wall-clock time. Default: none.
    pub daily_reset: Option<DailyReset>,
    /// How many of a session's most recent messages its transcript keeps (older ones are dropped and the
    /// transcript says it was truncated). `0` keeps none. Default: 1000.
    pub transcript_limit: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30 * 60),
            sweep_interval: None,
            daily_reset: None,
            transcript_limit: 1000,
        }
    }
}

/// A policy setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The hour is not in `0..=23` or the minute not in `0..=59`.
    #[error("invalid daily reset time {hour:02}:{minute:02}: the hour must be 0-23 and the minute 0-59")]
    InvalidTime {
        /// The hour given.
        hour: u8,
        /// The minute given.
        minute: u8,
    },
    /// The text is not `HH:MM` optionally followed by a space and an IANA time zone name.
    #[error("invalid daily reset `{text}`: expected `HH:MM` (UTC) or `HH:MM Area/City`")]
    InvalidFormat {
        /// The text given.
        text: String,
    },
    /// The time zone is not in the IANA database bundled with the binary.
    #[error("unknown time zone `{name}`: {source}")]
    UnknownZone {
        /// The name given.
        name: String,
        /// Why jiff could not find it.
        #[source]
        source: jiff::Error,
    },
}

/// The daily reset: every open session closes once a day at a wall-clock time `HH:MM:00` in a time zone.
///
/// Sessions whose idle deadline is at or before the reset instant close with `idle_expiry`, all others
/// with `scheduled_reset`.
///
/// # Days with a daylight-saving change
///
/// There is **exactly one reset per local calendar day**. The local time is turned into an instant with
/// the usual "compatible" rule (RFC 5545, the same as `java.time` and Temporal):
/// - if the time does not exist that day (it falls in the hour skipped when clocks go forward), the
///   reset happens that many minutes after the jump: `02:30` on a day that jumps from `02:00` to `03:00`
///   resets at `03:30` local time;
/// - if the time exists twice (clocks go back), the reset happens at the first occurrence only (the one
///   with the earlier, summer offset).
#[derive(Clone, PartialEq)]
pub struct DailyReset {
    hour: u8,
    minute: u8,
    zone: TimeZone,
    zone_name: Option<String>,
}

impl DailyReset {
    /// A reset at `hour:minute:00` UTC.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidTime`] if `hour > 23` or `minute > 59`.
    pub fn utc(hour: u8, minute: u8) -> Result<Self, PolicyError> {
        check_time(hour, minute)?;
        Ok(Self { hour, minute, zone: TimeZone::UTC, zone_name: None })
    }

    /// A reset at `hour:minute:00` local time in the IANA time zone `tz_name` (e.g. `"Europe/Berlin"`;
    /// `"UTC"` works too), from the time zone database bundled into the binary.
    ///
    /// # Errors
    ///
    /// [`PolicyError::InvalidTime`] for an impossible time, [`PolicyError::UnknownZone`] for an unknown
    /// zone name.
    pub fn in_zone(hour: u8, minute: u8, tz_name: &str) -> Result<Self, PolicyError> {
        check_time(hour, minute)?;
        let zone =
            TimeZone::get(tz_name).map_err(|source| PolicyError::UnknownZone { name: tz_name.to_owned(), source })?;
        Ok(Self { hour, minute, zone, zone_name: Some(tz_name.to_owned()) })
    }

    /// The hour of the reset (0-23, local time of the zone).
    pub fn hour(&self) -> u8 {
        self.hour
    }

    /// The minute of the reset (0-59).
    pub fn minute(&self) -> u8 {
        self.minute
    }

    /// The IANA name of the zone, or `"UTC"` for [`DailyReset::utc`].
    pub fn zone_name(&self) -> &str {
        self.zone_name.as_deref().unwrap_or("UTC")
    }

    /// The first reset instant strictly after `t`, or `None` past the end of the representable time range.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        Timestamp::from_nanosecond(self.next_after_nanos(t.as_nanosecond())?).ok()
    }

    /// [`next_after`](Self::next_after) on nanoseconds since the Unix epoch.
    pub(crate) fn next_after_nanos(&self, t: i128) -> Option<i128> {
        let offset = (i128::from(self.hour) * 3600 + i128::from(self.minute) * 60) * 1_000_000_000;
        if self.zone_name.is_none() {
            // UTC has no transitions: the resets are an arithmetic progression.
            let k = (t - offset).div_euclid(DAY_NANOS) + 1;
            return Some(k * DAY_NANOS + offset);
        }
        let now = Timestamp::from_nanosecond(t).ok()?;
        let mut date: Date = now.to_zoned(self.zone.clone()).date();
        // The reset of the current local day may already have passed; a day that does not exist locally
        // (a zone that skipped a date) maps onto the next one, so a few days always suffice.
        for _ in 0..4 {
            let local = date.at(self.hour as i8, self.minute as i8, 0, 0);
            let at = self.zone.to_ambiguous_timestamp(local).compatible().ok()?.as_nanosecond();
            if at > t {
                return Some(at);
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

fn check_time(hour: u8, minute: u8) -> Result<(), PolicyError> {
    if hour > 23 || minute > 59 { Err(PolicyError::InvalidTime { hour, minute }) } else { Ok(()) }
}

impl fmt::Debug for DailyReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DailyReset({self})")
    }
}

/// `HH:MM` for UTC, `HH:MM Area/City` for a zone: the form [`FromStr`] accepts.
impl fmt::Display for DailyReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)?;
        if let Some(name) = &self.zone_name {
            write!(f, " {name}")?;
        }
        Ok(())
    }
}

/// Parses `HH:MM` (UTC) or `HH:MM Area/City` (an IANA zone), as the CLI's `--daily-reset` takes it.
impl FromStr for DailyReset {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PolicyError::InvalidFormat { text: s.to_owned() };
        let s_trim = s.trim();
        let (time, zone) = match s_trim.split_once(char::is_whitespace) {
            Some((time, zone)) => (time, Some(zone.trim())),
            None => (s_trim, None),
        };
        let (h, m) = time.split_once(':').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 2 || m.len() != 2 {
            return Err(bad());
        }
        let hour: u8 = h.parse().map_err(|_| bad())?;
        let minute: u8 = m.parse().map_err(|_| bad())?;
        match zone {
            None => Self::utc(hour, minute),
            Some(name) => Self::in_zone(hour, minute, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn utc_reset_is_strictly_after() {
        let r = DailyReset::utc(4, 0).unwrap();
        assert_eq!(r.next_after(ts("2024-01-01T03:59:59Z")), Some(ts("2024-01-01T04:00:00Z")));
        assert_eq!(r.next_after(ts("2024-01-01T04:00:00Z")), Some(ts("2024-01-02T04:00:00Z")));
        assert_eq!(r.next_after(ts("1969-12-31T05:00:00Z")), Some(ts("1970-01-01T04:00:00Z")));
    }

    #[test]
    fn invalid_times_and_zones_are_rejected() {
        assert!(matches!(DailyReset::utc(24, 0), Err(PolicyError::InvalidTime { .. })));
        assert!(matches!(DailyReset::utc(0, 60), Err(PolicyError::InvalidTime { .. })));
        assert!(matches!(DailyReset::in_zone(1, 0, "Mars/Olympus"), Err(PolicyError::UnknownZone { .. })));
        assert!("4:00".parse::<DailyReset>().is_ok());
        assert!("04:00 Europe/Berlin".parse::<DailyReset>().is_ok());
        assert!("0400".parse::<DailyReset>().is_err());
        assert!("04:0".parse::<DailyReset>().is_err());
    }

    #[test]
    fn skipped_local_time_resets_once_after_the_gap() {
        // Europe/Berlin jumps from 02:00 to 03:00 on 2024-03-31.
        let r = DailyReset::in_zone(2, 30, "Europe/Berlin").unwrap();
        let first = r.next_after(ts("2024-03-30T12:00:00Z")).unwrap();
        assert_eq!(first, ts("2024-03-31T01:30:00Z")); // 03:30 CEST
        let second = r.next_after(first).unwrap();
        assert_eq!(second, ts("2024-04-01T00:30:00Z")); // 02:30 CEST
    }

    #[test]
    fn repeated_local_time_resets_once_at_the_first_occurrence() {
        // Europe/Berlin goes back from 03:00 to 02:00 on 2024-10-27: 02:30 happens twice.
        let r = DailyReset::in_zone(2, 30, "Europe/Berlin").unwrap();
        let first = r.next_after(ts("2024-10-26T12:00:00Z")).unwrap();
        assert_eq!(first, ts("2024-10-27T00:30:00Z")); // 02:30 CEST
        // Between the two occurrences the next reset is the next day's.
        assert_eq!(r.next_after(first), Some(ts("2024-10-28T01:30:00Z"))); // 02:30 CET
    }
}
