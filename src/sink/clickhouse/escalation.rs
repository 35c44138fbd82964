//! Escalation: what repeated refusals of one batch add up to.
//!
//! [`crate::sink::clickhouse::classify::classify`] judges one error. Some refusals are about the
//! rows (a view's expression fails for a few of them), some about the table
//! (a view that fails for every row), and the error code alone cannot tell
//! which. The batch's history can, so the committer asks [`Escalation`]:
//!
//! 1. A part refused with an error that names bad data is split at once;
//!    one refused otherwise is retried with backoff, and split once it has
//!    failed the same way (same exception code) `bisect_after` times. From
//!    then on the code is *proven* for this batch: any part it refuses is
//!    split at once.
//! 2. A single row that is refused while another part of the batch has
//!    landed is **poison**: it is dead-lettered with the server's message.
//!    A single row refused while nothing has landed yet is a **suspect**:
//!    held, neither dead-lettered nor acked, until the batch shows whether
//!    the table takes rows at all. When a part lands, every suspect is
//!    tried alone once more (the table may have been fixed meanwhile) and
//!    is poison if refused again.
//! 3. When `bisect_after` suspects were refused the same way and nothing
//!    landed — or every row of the batch is a suspect — the error is
//!    **table-level**: bisecting stops, and the rows left (suspects and
//!    untried parts) are retried together with a slow backoff, the flow
//!    reported stuck (metric, log, `sluice status`). Nothing is ever
//!    dead-lettered for it. Exception: a batch of fewer than
//!    `bisect_after` rows, each refused alone with an error that names bad
//!    data, gives no evidence of a broken table; its rows are poison, so
//!    a lone bad row in a quiet flow cannot hold the flow for good.
//! 4. While stuck, rows left are retried as one insert. If it lands, the
//!    batch is done. If it fails the same way `bisect_after` more times and
//!    untried parts remain, bisecting resumes where it stopped: a batch
//!    whose first rows happen to be bad ones is not mistaken for a broken
//!    table for good, because the next round reaches rows that land. An
//!    insert refused another way starts the judgement over for every row
//!    left.
//!
//! The invariant that protects healthy rows: a row is dead-lettered only
//! when ClickHouse refused it alone after accepting other rows of the same
//! batch. Errors that are not refusals (no answer, an overloaded server)
//! never reach this module: they are retried and say nothing about rows.

use std::time::SystemTime;

use crate::sink::clickhouse::classify;
use crate::sink::clickhouse::classify::{classify, exception_code, Disposition};

/// One refusal: the server's exception code (what "the same way" compares),
/// its message, and whether the code names bad data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub code: u32,
    pub message: String,
    pub names_data: bool,
}

impl Refusal {
    /// The refusal in `error`; None when the error is not one (no answer, a
    /// server in trouble: see [`classify`]).
    pub(crate) fn of(error: &clickhouse::error::Error) -> Option<Refusal> {
        match classify(error) {
            Disposition::Retry => None,
            d => Some(Refusal {
                code: match error {
                    clickhouse::error::Error::BadResponse(t) => exception_code(t).unwrap_or(0),
                    _ => 0,
                },
                message: error.to_string(),
                names_data: d == Disposition::Bisect,
            }),
        }
    }

    /// A refusal known only by its text (the exactly-once insert reports it so).
    pub(crate) fn from_text(text: &str) -> Refusal {
        let names_data = classify::classify_server_text(text) == Disposition::Bisect;
        Refusal {
            code: exception_code(text).unwrap_or(0),
            message: text.to_string(),
            names_data,
        }
    }
}

/// What to do with a refused part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Send the same part again after a backoff.
    RetryLater,
    /// Split it in halves.
    Split,
    /// A single row refused while other rows of the batch landed: dead-letter it.
    Poison,
    /// A single row refused while nothing of the batch has landed: hold it.
    Suspect,
}

/// The decision for one refused part (the heart of this module, pure):
/// `rows` in the part, refused `same` times in a row with this code (this
/// time included), `k` = `bisect_after`, `proven` = the batch's bisection
/// has shown this code to be deterministic, `accepted` = some part of the
/// batch has landed since the bisection began.
pub(crate) fn decide(
    rows: usize,
    same: u32,
    k: u32,
    names_data: bool,
    proven: bool,
    accepted: bool,
) -> Verdict {
    let deterministic = names_data || proven || same >= k;
    match (deterministic, rows > 1, accepted) {
        (false, _, _) => Verdict::RetryLater,
        (true, true, _) => Verdict::Split,
        (true, false, true) => Verdict::Poison,
        (true, false, false) => Verdict::Suspect,
    }
}

/// After a suspect was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterSuspect {
    /// Go on bisecting.
    Continue,
    /// `bisect_after` suspects refused the same way, nothing landed: stop.
    TableLevel,
    /// (Only from [`Escalation::all_suspects`]) the suspects are poison.
    Poison,
}

/// While stuck, after the rows left were refused together once more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WhileStuck {
    /// Wait (slow backoff) and try them together again.
    Wait,
    /// Resume bisecting the untried parts where it stopped.
    Resume,
    /// Refused another way: judge every row left anew.
    Restart,
}

/// A flow stuck on a table-level error: since when, and the latest error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stuck {
    pub since: SystemTime,
    pub refusal: Refusal,
    /// Refusals of the rows left, taken together, since the last round.
    pub refused: u32,
}

/// The escalation state of one batch being committed.
#[derive(Debug, Clone)]
pub(crate) struct Escalation {
    k: u32,
    /// Codes this batch's bisection has shown to be deterministic.
    proven: Vec<u32>,
    accepted: bool,
    /// Suspects of this round, counted per code.
    suspects: Vec<(u32, u32)>,
    stuck: Option<Stuck>,
}

impl Escalation {
    /// `k` = `clickhouse.bisect_after` (at least 1).
    pub(crate) fn new(k: u32) -> Self {
        Escalation {
            k: k.max(1),
            proven: Vec::new(),
            accepted: false,
            suspects: Vec::new(),
            stuck: None,
        }
    }

    pub(crate) fn bisect_after(&self) -> u32 {
        self.k
    }

    /// Some part of the batch landed since the bisection began.
    #[cfg(test)]
    pub(crate) fn accepted(&self) -> bool {
        self.accepted
    }

    pub(crate) fn stuck(&self) -> Option<&Stuck> {
        self.stuck.as_ref()
    }

    /// [`decide`] for a part refused `same` times in a row by `refusal`;
    /// a split proves the code for the rest of the batch.
    pub(crate) fn refused(&mut self, rows: usize, same: u32, refusal: &Refusal) -> Verdict {
        let proven = self.proven.contains(&refusal.code);
        let verdict = decide(
            rows,
            same,
            self.k,
            refusal.names_data,
            proven,
            self.accepted,
        );
        if verdict != Verdict::RetryLater && !proven {
            self.proven.push(refusal.code);
        }
        verdict
    }

    /// A part landed. True when held suspects must be tried again: refused
    /// alone once more, they are poison.
    pub(crate) fn landed(&mut self) -> bool {
        let release = !self.accepted && !self.suspects.is_empty();
        self.accepted = true;
        self.suspects.clear();
        release
    }

    /// A single row became a suspect.
    pub(crate) fn suspect(&mut self, refusal: &Refusal) -> AfterSuspect {
        let n = match self.suspects.iter_mut().find(|(c, _)| *c == refusal.code) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.suspects.push((refusal.code, 1));
                1
            }
        };
        if n >= self.k {
            AfterSuspect::TableLevel
        } else {
            AfterSuspect::Continue
        }
    }

    /// Every row of the batch was tried alone and refused, and nothing
    /// landed (too few rows for `bisect_after` suspects of one kind). With
    /// fewer than `bisect_after` rows there is no evidence either way: a
    /// lone bad row in a quiet flow would otherwise hold the flow for good.
    /// When the server named bad data for every one of them, they are
    /// poison; otherwise (a code that names no data) the batch is held as
    /// table-level.
    pub(crate) fn all_suspects(&self, refusals: &[&Refusal]) -> AfterSuspect {
        let few = refusals.len() < self.k as usize;
        if few && refusals.iter().all(|r| r.names_data) {
            AfterSuspect::Poison
        } else {
            AfterSuspect::TableLevel
        }
    }

    /// Bisecting stopped on a table-level error (`refusal` the latest).
    /// Returns true when the flow just became stuck (not already).
    pub(crate) fn table_level(&mut self, refusal: &Refusal, now: SystemTime) -> bool {
        self.suspects.clear();
        match &mut self.stuck {
            Some(s) => {
                s.refusal = refusal.clone();
                s.refused = 0;
                false
            }
            None => {
                self.stuck = Some(Stuck {
                    since: now,
                    refusal: refusal.clone(),
                    refused: 0,
                });
                true
            }
        }
    }

    /// While stuck, the rows left were refused together by `refusal`;
    /// `untried` = bisecting has parts it did not try yet.
    pub(crate) fn refused_while_stuck(&mut self, refusal: &Refusal, untried: bool) -> WhileStuck {
        let k = self.k;
        let Some(stuck) = &mut self.stuck else {
            return WhileStuck::Restart;
        };
        if refusal.code != stuck.refusal.code {
            stuck.refusal = refusal.clone();
            self.proven.clear();
            self.accepted = false;
            self.suspects.clear();
            return WhileStuck::Restart;
        }
        stuck.refusal = refusal.clone();
        stuck.refused += 1;
        if untried && stuck.refused >= k {
            stuck.refused = 0;
            WhileStuck::Resume
        } else {
            WhileStuck::Wait
        }
    }

    /// The flow is no longer stuck (the rows left landed, or some part did).
    /// Returns the stuck state it left, if any.
    pub(crate) fn unstick(&mut self) -> Option<Stuck> {
        self.stuck.take()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lone_row_refused_for_its_data_is_poison_not_a_stuck_table() {
        let data = Refusal {
            code: 395,
            message: "throwIf".into(),
            names_data: true,
        };
        let unknown = Refusal {
            code: 1001,
            message: "std::exception".into(),
            names_data: false,
        };
        let esc = super::Escalation::new(3);
        assert_eq!(esc.all_suspects(&[&data]), super::AfterSuspect::Poison);
        assert_eq!(
            esc.all_suspects(&[&data, &data]),
            super::AfterSuspect::Poison
        );
        // As many rows as bisect_after: evidence of a table-level error.
        assert_eq!(
            esc.all_suspects(&[&data, &data, &data]),
            super::AfterSuspect::TableLevel
        );
        // A code that names no data: held, never dead-lettered.
        assert_eq!(
            esc.all_suspects(&[&unknown]),
            super::AfterSuspect::TableLevel
        );
        assert_eq!(
            esc.all_suspects(&[&data, &unknown]),
            super::AfterSuspect::TableLevel
        );
    }

    use super::*;

    fn refusal(code: u32, names_data: bool) -> Refusal {
        Refusal {
            code,
            message: format!("Code: {code}. DB::Exception: test"),
            names_data,
        }
    }

    #[test]
    fn the_decision_table() {
        use Verdict::*;
        // (rows, same, names_data, proven, accepted) → verdict, with k = 3.
        let cases = [
            ((100, 1, false, false, false), RetryLater),
            ((100, 2, false, false, false), RetryLater),
            ((100, 3, false, false, false), Split),
            ((100, 1, true, false, false), Split),
            ((100, 1, false, true, false), Split),
            ((1, 1, false, false, true), RetryLater),
            ((1, 3, false, false, true), Poison),
            ((1, 1, true, false, true), Poison),
            ((1, 1, false, true, true), Poison),
            ((1, 1, false, true, false), Suspect),
            ((1, 1, true, false, false), Suspect),
            ((1, 3, false, false, false), Suspect),
        ];
        for ((rows, same, data, proven, accepted), want) in cases {
            assert_eq!(
                decide(rows, same, 3, data, proven, accepted),
                want,
                "rows {rows} same {same} data {data} proven {proven} accepted {accepted}"
            );
        }
    }

    #[test]
    fn an_unknown_code_escalates_after_k_failures_and_is_then_proven() {
        let mut e = Escalation::new(3);
        let view = refusal(153, false);
        assert_eq!(e.refused(1000, 1, &view), Verdict::RetryLater);
        assert_eq!(e.refused(1000, 2, &view), Verdict::RetryLater);
        assert_eq!(e.refused(1000, 3, &view), Verdict::Split);
        // Its halves are split at once: the code is proven for this batch.
        assert_eq!(e.refused(500, 1, &view), Verdict::Split);
        // Another unknown code is not: retried first.
        assert_eq!(e.refused(250, 1, &refusal(407, false)), Verdict::RetryLater);
    }

    #[test]
    fn suspects_become_poison_once_a_part_lands() {
        let mut e = Escalation::new(3);
        let bad = refusal(395, true);
        assert_eq!(e.refused(4, 1, &bad), Verdict::Split);
        assert_eq!(e.refused(2, 1, &bad), Verdict::Split);
        assert_eq!(e.refused(1, 1, &bad), Verdict::Suspect);
        assert_eq!(e.suspect(&bad), AfterSuspect::Continue);
        assert!(e.landed(), "the held suspect is tried again");
        assert!(!e.landed(), "nothing more to release");
        // Refused alone again, now that the table takes rows: poison.
        assert_eq!(e.refused(1, 1, &bad), Verdict::Poison);
    }

    #[test]
    fn k_suspects_refused_the_same_way_with_nothing_landed_is_table_level() {
        let mut e = Escalation::new(3);
        let view = refusal(53, true);
        assert_eq!(e.suspect(&view), AfterSuspect::Continue);
        // A suspect refused another way does not count towards this one.
        assert_eq!(e.suspect(&refusal(27, true)), AfterSuspect::Continue);
        assert_eq!(e.suspect(&view), AfterSuspect::Continue);
        assert_eq!(e.suspect(&view), AfterSuspect::TableLevel);
        let t0 = SystemTime::UNIX_EPOCH;
        assert!(e.table_level(&view, t0), "just became stuck");
        assert!(!e.table_level(&view, SystemTime::now()), "already stuck");
        assert_eq!(e.stuck().unwrap().since, t0, "since the first time");
    }

    #[test]
    fn while_stuck_the_same_refusal_k_times_resumes_bisecting() {
        let mut e = Escalation::new(2);
        let view = refusal(153, false);
        e.table_level(&view, SystemTime::now());
        assert_eq!(e.refused_while_stuck(&view, true), WhileStuck::Wait);
        assert_eq!(e.refused_while_stuck(&view, true), WhileStuck::Resume);
        assert_eq!(e.refused_while_stuck(&view, true), WhileStuck::Wait);
        // Nothing left to try: every row failed the same way; wait for good.
        for _ in 0..5 {
            assert_eq!(e.refused_while_stuck(&view, false), WhileStuck::Wait);
        }
        // Resumed rounds need k new suspects to stop again.
        assert_eq!(e.suspect(&view), AfterSuspect::Continue);
        assert_eq!(e.suspect(&view), AfterSuspect::TableLevel);
    }

    #[test]
    fn while_stuck_another_refusal_starts_over() {
        let mut e = Escalation::new(3);
        let view = refusal(153, false);
        assert_eq!(e.refused(10, 3, &view), Verdict::Split);
        e.suspect(&view);
        e.table_level(&view, SystemTime::now());
        let other = refusal(60, false);
        assert_eq!(e.refused_while_stuck(&other, true), WhileStuck::Restart);
        assert!(!e.accepted());
        // The old code is no longer proven.
        assert_eq!(e.refused(10, 1, &view), Verdict::RetryLater);
        assert!(e.stuck().is_some(), "still stuck until something lands");
        assert!(e.unstick().is_some());
        assert!(e.stuck().is_none());
    }

    #[test]
    fn refusals_from_errors_and_texts_agree() {
        let text = "Code: 153, e.displayText() = DB::Exception: Division by zero: while pushing to view default.mv";
        let from_error =
            Refusal::of(&clickhouse::error::Error::BadResponse(text.into())).expect("a refusal");
        assert_eq!(from_error.code, 153);
        assert!(!from_error.names_data);
        let from_text = Refusal::from_text(text);
        assert_eq!((from_text.code, from_text.names_data), (153, false));
        assert!(Refusal::of(&clickhouse::error::Error::TimedOut).is_none());
        assert!(Refusal::of(&clickhouse::error::Error::Custom("task died".into())).is_none());
        assert!(Refusal::from_text("Code: 27. DB::Exception: Cannot parse input").names_data);
    }
}
