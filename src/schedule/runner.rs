//! The schedule loop every replica runs: write the config's schedules to
//! Redis, re-read all schedules every `scheduler.refresh`, and at each tick
//! run the fire script — which lets exactly one replica add the tick's entry.

use std::collections::HashMap;
use std::time::Duration;

use fred::prelude::Client;
use tokio_util::sync::CancellationToken;

use super::spec::{Millis, ScheduleConfig, Spec};
use super::store::{self, FireOutcome, State, Upserted};
use crate::redis::sharder::Sharder;
use crate::time::now_ms;

/// What one pass did for one schedule.
enum Step {
    Ok,
    /// Redis failed; the ticks are tried again.
    Failed,
    /// Removed (or its hash deleted): stop following it.
    Gone,
}

/// One schedule as this replica follows it.
#[derive(Debug)]
struct Live {
    spec: Spec,
    state: String,
    /// Every tick up to here has been dealt with (by someone).
    cursor: Millis,
}

pub(crate) struct Scheduler {
    pub client: Client,
    /// Written into tick keys: which replica took a tick.
    pub owner: String,
    pub refresh: Duration,
    pub config_schedules: Vec<ScheduleConfig>,
    /// Picks the shard of a sharded target stream.
    pub sharder: Sharder,
    /// Redis Cluster: the target stream is in another slot (fired in steps).
    pub cluster: bool,
}

impl Scheduler {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut live: HashMap<String, Live> = HashMap::new();
        let mut config_written = false;
        let mut warned: HashMap<String, String> = HashMap::new();
        let mut next_refresh = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if tokio::time::Instant::now() >= next_refresh {
                next_refresh = tokio::time::Instant::now() + self.refresh;
                if !config_written {
                    config_written = self.write_config_schedules().await;
                    if config_written {
                        self.warn_orphans().await;
                    }
                }
                if let Err(e) = self.refresh_live(&mut live, &mut warned).await {
                    tracing::warn!(error = %e, "reading schedules from Redis failed; will retry");
                }
            }
            let now = now_ms();
            let mut gone = Vec::new();
            let mut failed = false;
            for (name, l) in live.iter_mut() {
                match self.step(l, now).await {
                    Step::Ok => {}
                    Step::Failed => failed = true,
                    Step::Gone => gone.push(name.clone()),
                }
            }
            for name in gone {
                live.remove(&name);
                tracing::info!(schedule = %name, "schedule removed; no longer firing");
            }
            // Sleep until the next tick of any schedule, or the next refresh.
            let now = now_ms();
            let mut wait = next_refresh.saturating_duration_since(tokio::time::Instant::now());
            for l in live.values() {
                if let Some(next) = l.spec.next_after(l.cursor) {
                    wait = wait.min(Duration::from_millis(next.saturating_sub(now)));
                }
            }
            // After a Redis error, retry no faster than every 250 ms.
            let floor = Duration::from_millis(if failed { 250 } else { 1 });
            let wait = wait.max(floor);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Writes every `[[schedule]]` of the config; true when all were written.
    async fn write_config_schedules(&self) -> bool {
        let now = now_ms();
        for c in &self.config_schedules {
            let spec = match Spec::from_config(c) {
                Ok(s) => s,
                Err(e) => {
                    // Validated at load; only reachable for hand-built configs.
                    tracing::error!(schedule = %c.name, error = %e, "invalid schedule");
                    continue;
                }
            };
            match store::upsert_from_config(&self.client, &spec, c.paused, now).await {
                Ok(Upserted::Created) => {
                    tracing::info!(schedule = %c.name, trigger = %spec.trigger.describe(), stream = %spec.stream, "schedule created from config")
                }
                Ok(Upserted::Kept(state)) => {
                    tracing::debug!(schedule = %c.name, %state, "schedule definition updated from config")
                }
                Ok(Upserted::Removed) => {
                    tracing::info!(schedule = %c.name, "schedule is in the config but was removed at run time; leaving it removed (`sluice schedule add` or DEL of its hash brings it back)")
                }
                Err(e) => {
                    tracing::warn!(schedule = %c.name, error = %e, "writing schedule to Redis failed; will retry");
                    return false;
                }
            }
        }
        true
    }

    /// Schedules that came from a config but are not in this one keep
    /// running (another deployment may own them): say so once.
    async fn warn_orphans(&self) {
        let Ok(all) = store::load_all(&self.client).await else {
            return;
        };
        for s in all {
            let in_config = self.config_schedules.iter().any(|c| c.name == s.name);
            if !in_config
                && s.source.as_deref() == Some("config")
                && s.state() != Some(State::Removed)
            {
                tracing::warn!(schedule = %s.name, state = %s.state, "schedule was created from a config but is not in this one; it keeps firing until `sluice schedule remove` is run");
            }
        }
    }

    async fn refresh_live(
        &self,
        live: &mut HashMap<String, Live>,
        warned: &mut HashMap<String, String>,
    ) -> store::Result<()> {
        let now = now_ms();
        let all = store::load_all(&self.client).await?;
        let mut seen = std::collections::HashSet::new();
        for s in all {
            seen.insert(s.name.clone());
            let spec = match s.spec {
                Ok(spec) => spec,
                Err(e) => {
                    let text = e.to_string();
                    if warned.get(&s.name) != Some(&text) {
                        tracing::warn!(schedule = %s.name, error = %text, "schedule has an invalid definition in Redis; not firing it");
                        warned.insert(s.name.clone(), text);
                    }
                    live.remove(&s.name);
                    continue;
                }
            };
            let mut state = s.state.clone();
            match State::parse(&state) {
                Some(State::Removed) => {
                    if live.remove(&s.name).is_some() {
                        tracing::info!(schedule = %s.name, "schedule removed; no longer firing");
                    }
                    continue;
                }
                Some(State::Init) => {
                    if store::activate(&self.client, &s.name, now).await? {
                        tracing::info!(schedule = %s.name, trigger = %spec.trigger.describe(), stream = %spec.stream, "schedule running");
                    }
                    state = State::Running.as_str().to_string();
                }
                Some(_) => {}
                None => {
                    let text = format!("unknown state {state:?}");
                    if warned.get(&s.name) != Some(&text) {
                        tracing::warn!(schedule = %s.name, state = %state, "unknown schedule state (expected init, running, paused or removed); treating it as paused");
                        warned.insert(s.name.clone(), text);
                    }
                }
            }
            let stored_cursor = s.last_tick;
            match live.get_mut(&s.name) {
                Some(l) => {
                    l.spec = spec;
                    l.state = state;
                    if let Some(c) = stored_cursor {
                        l.cursor = l.cursor.max(c);
                    }
                }
                None => {
                    live.insert(
                        s.name.clone(),
                        Live {
                            spec,
                            state,
                            cursor: stored_cursor.unwrap_or(now),
                        },
                    );
                }
            }
        }
        live.retain(|name, _| seen.contains(name));
        Ok(())
    }

    /// Fires what is due for one schedule.
    async fn step(&self, l: &mut Live, now: Millis) -> Step {
        let due = l.spec.due(l.cursor, now);
        if due.skipped {
            tracing::info!(schedule = %l.spec.name, policy = %l.spec.missed, since = %super::spec::format_time(l.cursor), "ticks missed while no replica could fire them were left out");
        }
        for tick in due.ticks {
            let fields = l.spec.render(tick, now);
            let target = store::Target {
                stream: store::pick_stream(&self.sharder, &l.spec.stream, &fields),
                cluster: self.cluster,
            };
            match store::fire(
                &self.client,
                &l.spec,
                tick,
                now,
                &self.owner,
                target,
                fields,
            )
            .await
            {
                Ok(FireOutcome::Fired(id)) => {
                    if l.state != State::Running.as_str() {
                        tracing::info!(schedule = %l.spec.name, "schedule running; firing");
                        l.state = State::Running.as_str().to_string();
                    }
                    tracing::debug!(schedule = %l.spec.name, tick, %id, stream = %l.spec.stream, "schedule fired");
                }
                Ok(FireOutcome::AlreadyDone) => {}
                // Another replica is adding the entry (or died doing so;
                // its guard expires): look again on the next pass.
                Ok(FireOutcome::InProgress) => return Step::Failed,
                Ok(FireOutcome::Passed(state)) => {
                    if l.state != state {
                        tracing::info!(schedule = %l.spec.name, %state, "schedule not running; its ticks pass without entries");
                        l.state = state;
                    }
                }
                Ok(FireOutcome::Removed) => return Step::Gone,
                Err(e) => {
                    tracing::warn!(schedule = %l.spec.name, tick, error = %e, "firing a tick failed; will retry");
                    return Step::Failed;
                }
            }
            l.cursor = tick;
        }
        // Nothing due: the skipped range is behind us too.
        if l.cursor < now.saturating_sub(l.spec.grace.as_millis() as u64) {
            l.cursor = now.saturating_sub(l.spec.grace.as_millis() as u64);
        }
        Step::Ok
    }
}
