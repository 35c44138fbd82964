//! When a schedule ticks: the pure tick arithmetic of a [`Spec`] (next and
//! previous ticks in its window, what is due now under its missed-tick
//! policy) and the rendering of a tick's entry. The definition itself (what
//! a schedule is, its parsing and checks) is `crate::config::schedule`;
//! nothing here talks to Redis.
//!
//! All times are Unix milliseconds, UTC.

use std::time::Duration;

use chrono::{DateTime, Utc};

pub(crate) use crate::config::schedule::{
    default_grace, format_time, parse_time, Millis, MissedPolicy, RawSpec, ScheduleConfig, Spec,
    SpecError, TickContext, Trigger,
};

/// Most ticks one pass fires for one schedule (a bound, not a policy).
pub(crate) const MAX_TICKS_PER_PASS: usize = 1000;

fn to_datetime(ms: Millis) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms.min(i64::MAX as u64 / 2) as i64)
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Spec {
    fn anchor(&self) -> Millis {
        self.start.unwrap_or(0)
    }

    /// The trigger's first tick strictly after `t`, ignoring the window.
    fn trigger_after(&self, t: Millis) -> Option<Millis> {
        match &self.trigger {
            Trigger::Every(d) => {
                let every = d.as_millis() as u64;
                let anchor = self.anchor();
                if t < anchor {
                    Some(anchor)
                } else {
                    ((t - anchor) / every)
                        .checked_add(1)?
                        .checked_mul(every)?
                        .checked_add(anchor)
                }
            }
            Trigger::At(at) => (*at > t).then_some(*at),
            Trigger::Cron(c) => c
                .after(&to_datetime(t))
                .next()
                .and_then(|d| u64::try_from(d.timestamp_millis()).ok())
                .filter(|&n| n > t),
        }
    }

    /// The trigger's last tick strictly before `t`, ignoring the window.
    fn trigger_before(&self, t: Millis) -> Option<Millis> {
        match &self.trigger {
            Trigger::Every(d) => {
                let every = d.as_millis() as u64;
                let anchor = self.anchor();
                if t <= anchor {
                    None
                } else {
                    Some(anchor + (t - anchor - 1) / every * every)
                }
            }
            Trigger::At(at) => (*at < t).then_some(*at),
            Trigger::Cron(c) => {
                let mut it = c.after(&to_datetime(t));
                // The cron crate steps back from whole seconds; skip any
                // answer that is not strictly earlier.
                for _ in 0..3 {
                    let prev = it.next_back()?;
                    let ms = u64::try_from(prev.timestamp_millis()).ok()?;
                    if ms < t {
                        return Some(ms);
                    }
                }
                None
            }
        }
    }

    /// The first tick strictly after `t` within `start`..=`end`.
    pub fn next_after(&self, t: Millis) -> Option<Millis> {
        let from = match self.start {
            Some(s) if s > 0 && t < s => s - 1,
            _ => t,
        };
        let next = self.trigger_after(from)?;
        match self.end {
            Some(e) if next > e => None,
            _ => Some(next),
        }
    }

    /// The last tick strictly before `t` within `start`..=`end`.
    pub fn prev_before(&self, t: Millis) -> Option<Millis> {
        let from = match self.end {
            Some(e) if t > e => e.saturating_add(1),
            _ => t,
        };
        let prev = self.trigger_before(from)?;
        match self.start {
            Some(s) if prev < s => None,
            _ => Some(prev),
        }
    }

    /// The ticks to fire now, in order, given that every tick up to and
    /// including `cursor` has been dealt with. Ticks no older than `grace`
    /// are on time and all fired; older ones were missed and follow the
    /// policy (`skip`: none, `catch_up:K`: the latest K).
    pub fn due(&self, cursor: Millis, now: Millis) -> Due {
        let grace = self.grace.as_millis() as u64;
        let on_time_from = now.saturating_sub(grace);
        let mut due = Due::default();
        if on_time_from > cursor.saturating_add(1) {
            // Ticks in (cursor, on_time_from) were missed.
            let keep = match self.missed {
                MissedPolicy::Skip => 0,
                MissedPolicy::CatchUp(k) => k as usize,
            };
            let mut missed = Vec::new();
            let mut t = on_time_from;
            while let Some(p) = self.prev_before(t) {
                if p <= cursor {
                    break;
                }
                if missed.len() == keep.min(MAX_TICKS_PER_PASS) {
                    due.skipped = true;
                    break;
                }
                missed.push(p);
                t = p;
            }
            missed.reverse();
            due.ticks = missed;
        }
        let mut t = cursor.max(on_time_from.saturating_sub(1));
        while due.ticks.len() < MAX_TICKS_PER_PASS {
            match self.next_after(t) {
                Some(n) if n <= now => {
                    due.ticks.push(n);
                    t = n;
                }
                _ => break,
            }
        }
        due
    }

    /// Renders the entry fields of one tick.
    pub fn render(&self, tick: Millis, now: Millis) -> Vec<(String, String)> {
        let ctx = TickContext {
            name: &self.name,
            tick,
            now,
        };
        self.fields
            .iter()
            .map(|(k, v)| (k.clone(), v.render(&ctx)))
            .collect()
    }

    /// How long a tick's exactly-once key lives: long enough that every
    /// replica that could still try that tick finds it.
    pub fn tick_key_ttl(&self) -> Duration {
        self.grace * 2 + Duration::from_secs(60)
    }
}

/// The outcome of [`Spec::due`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub ticks: Vec<Millis>,
    /// Some missed ticks were left out by the policy.
    pub skipped: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schedule::{parse_cron, Template};

    fn every(ms: u64) -> Spec {
        Spec::from_raw(&RawSpec {
            name: "t",
            every: Some(Duration::from_millis(ms)),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap()
    }

    fn cron(line: &str) -> Spec {
        Spec::from_raw(&RawSpec {
            name: "c",
            cron: Some(line),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap()
    }

    const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn every_is_aligned_to_epoch_or_start() {
        let s = every(200);
        assert_eq!(s.next_after(T0), Some(T0 + 200));
        assert_eq!(s.next_after(T0 + 1), Some(T0 + 200));
        assert_eq!(s.next_after(T0 - 1), Some(T0));
        assert_eq!(s.prev_before(T0 + 200), Some(T0));
        assert_eq!(s.prev_before(T0 + 201), Some(T0 + 200));
        let mut s = every(1000);
        s.start = Some(T0 + 333);
        assert_eq!(s.next_after(0), Some(T0 + 333));
        assert_eq!(s.next_after(T0 + 333), Some(T0 + 1333));
        assert_eq!(s.prev_before(T0 + 333), None);
    }

    #[test]
    fn cron_with_seconds_steps_both_ways() {
        let s = cron("*/2 * * * * *");
        assert_eq!(s.next_after(T0), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 + 500), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 - 1), Some(T0));
        assert_eq!(s.prev_before(T0 + 2000), Some(T0));
        assert_eq!(s.prev_before(T0 + 2500), Some(T0 + 2000));
        assert_eq!(s.prev_before(T0 + 1), Some(T0));
        // five fields: a crontab line at second 0
        let s = cron("30 2 * * *");
        assert_eq!(s.next_after(T0), Some(T0 + (2 * 3600 + 30 * 60) * 1000));
        assert!(parse_cron("not a cron").is_err());
    }

    #[test]
    fn window_bounds_ticks() {
        let mut s = every(1000);
        s.end = Some(T0 + 2000);
        assert_eq!(s.next_after(T0 + 1000), Some(T0 + 2000));
        assert_eq!(s.next_after(T0 + 2000), None);
        assert_eq!(s.prev_before(T0 + 10_000), Some(T0 + 2000));
        let at = Spec::from_raw(&RawSpec {
            name: "a",
            at: Some("2026-01-01T00:00:10Z"),
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(at.next_after(T0), Some(T0 + 10_000));
        assert_eq!(at.next_after(T0 + 10_000), None);
        assert_eq!(at.prev_before(T0 + 10_001), Some(T0 + 10_000));
    }

    #[test]
    fn due_fires_on_time_ticks_and_applies_missed_policy() {
        let mut s = every(200);
        // Running normally: everything after the cursor up to now.
        assert_eq!(s.due(T0, T0 + 450).ticks, vec![T0 + 200, T0 + 400]);
        assert_eq!(s.due(T0 + 400, T0 + 450).ticks, Vec::<Millis>::new());
        // Back after 10 s of downtime, grace 1 s: skip drops the old ones.
        let d = s.due(T0, T0 + 10_000);
        assert!(d.skipped);
        assert_eq!(d.ticks.first(), Some(&(T0 + 9_000)));
        assert_eq!(d.ticks.last(), Some(&(T0 + 10_000)));
        assert_eq!(d.ticks.len(), 6);
        // catch_up:3 fires the three latest missed ticks first.
        s.missed = MissedPolicy::CatchUp(3);
        let d = s.due(T0, T0 + 10_000);
        assert!(d.skipped);
        assert_eq!(
            &d.ticks[..4],
            &[T0 + 8_400, T0 + 8_600, T0 + 8_800, T0 + 9_000]
        );
        // Fewer missed than K: all of them, nothing reported skipped.
        let d = s.due(T0 + 8_500, T0 + 10_000);
        assert!(!d.skipped);
        assert_eq!(&d.ticks[..2], &[T0 + 8_600, T0 + 8_800]);
    }

    #[test]
    fn missed_policy_parses_and_prints() {
        assert_eq!("skip".parse::<MissedPolicy>().unwrap(), MissedPolicy::Skip);
        assert_eq!(
            "catch_up:3".parse::<MissedPolicy>().unwrap(),
            MissedPolicy::CatchUp(3)
        );
        assert_eq!(MissedPolicy::CatchUp(3).to_string(), "catch_up:3");
        assert!("later".parse::<MissedPolicy>().is_err());
    }

    #[test]
    fn templates_render_and_reject_unknown_placeholders() {
        let t = Template::parse("{name}-{tick} at {now} {{x}}").unwrap();
        let out = t.render(&TickContext {
            name: "n",
            tick: T0,
            now: T0 + 5,
        });
        assert_eq!(out, "n-1767225600000 at 2026-01-01T00:00:00.005Z {x}");
        assert_eq!(
            Template::parse("{tick_iso}").unwrap().render(&TickContext {
                name: "n",
                tick: T0,
                now: T0
            }),
            "2026-01-01T00:00:00.000Z"
        );
        assert!(Template::parse("{nope}").unwrap_err().contains("nope"));
        assert!(Template::parse("{tick").is_err());
        assert!(Template::parse("a}").is_err());
    }

    #[test]
    fn spec_round_trips_through_hash_fields() {
        let cfg: ScheduleConfig = toml::from_str(
            r#"
name = "r"
cron = "0 */5 * * * *"
start = "2026-01-01T00:00:00Z"
stream = "jobs"
fields = { a = "{tick}", b = "x" }
missed = { catch_up = 2 }
grace = "3s"
"#,
        )
        .unwrap();
        let spec = Spec::from_config(&cfg).unwrap();
        let h: std::collections::HashMap<String, String> = spec
            .hash_fields()
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let back = Spec::from_hash("r", &h).unwrap();
        assert_eq!(back.start, Some(T0));
        assert_eq!(back.missed, MissedPolicy::CatchUp(2));
        assert_eq!(back.grace, Duration::from_secs(3));
        assert_eq!(back.fields, spec.fields);
        assert_eq!(back.next_after(T0), Some(T0 + 300_000));
    }

    #[test]
    fn definitions_are_checked() {
        let base = RawSpec {
            name: "x",
            stream: "s",
            grace: Duration::from_secs(1),
            ..Default::default()
        };
        let e = Spec::from_raw(&base).unwrap_err();
        assert!(e.message.contains("one of"), "{e}");
        let e = Spec::from_raw(&RawSpec {
            every: Some(Duration::from_millis(10)),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "every");
        let e = Spec::from_raw(&RawSpec {
            name: "a b",
            every: Some(Duration::from_secs(1)),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "name");
        let e = Spec::from_raw(&RawSpec {
            cron: Some("* * * * * *"),
            every: Some(Duration::from_secs(1)),
            ..base.clone()
        })
        .unwrap_err();
        assert!(e.message.contains("only one"), "{e}");
        let e = Spec::from_raw(&RawSpec {
            every: Some(Duration::from_secs(1)),
            start: Some("2026-01-02T00:00:00Z"),
            end: Some("2026-01-01T00:00:00Z"),
            ..base.clone()
        })
        .unwrap_err();
        assert_eq!(e.key, "end");
        assert_eq!(parse_time("1767225600000").unwrap(), T0);
        assert_eq!(parse_time("2026-01-01T01:00:00+01:00").unwrap(), T0);
    }
}
