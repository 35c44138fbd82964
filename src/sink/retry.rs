//! Retry or poison? The one place that decides what a failed insert means,
//! and the backoff used while waiting for a sink to come back.

use std::time::Duration;

/// What to do with a batch whose insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The server or the path to it is unwell (down, overloaded, timing out,
    /// misconfigured): keep the batch, back off, try again. Nothing is acked.
    Retry,
    /// The data itself was refused: split the batch to isolate the bad rows.
    Bisect,
}

/// ClickHouse exception codes that say "this data is bad". Everything a retry
/// cannot fix and that depends on the rows sent.
const DATA_ERROR_CODES: &[u32] = &[
    6,   // CANNOT_PARSE_TEXT
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    32,  // ATTEMPT_TO_READ_AFTER_EOF (truncated/invalid block)
    33,  // CANNOT_READ_ALL_DATA
    38,  // CANNOT_PARSE_DATE
    41,  // CANNOT_PARSE_DATETIME
    53,  // TYPE_MISMATCH
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    72,  // CANNOT_PARSE_NUMBER
    117, // INCORRECT_DATA
    131, // TOO_LARGE_STRING_SIZE
    190, // SIZES_OF_ARRAYS_DOESNT_MATCH
    321, // VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    395, // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO (throwIf checks in MATERIALIZED columns)
    469, // VIOLATED_CONSTRAINT
];

/// Decides between retrying and bisecting a failed insert.
///
/// Only errors that name bad data bisect. Connection trouble, timeouts,
/// overload (`TOO_MANY_PARTS`, memory limits) and also table-level problems
/// (unknown table, missing rights, read-only) retry: dead-lettering every
/// row because a table was dropped would turn an outage into data loss.
pub fn classify(error: &clickhouse::error::Error) -> Disposition {
    use clickhouse::error::Error as E;
    match error {
        E::BadResponse(text) => classify_server_text(text),
        E::DataFormat(_) | E::Custom(_) | E::SchemaMismatch(_) => Disposition::Bisect,
        _ => Disposition::Retry,
    }
}

/// Classifies a ClickHouse exception text such as
/// `Code: 27, e.displayText() = DB::Exception: Cannot parse input …` (18.x)
/// or `Code: 27. DB::Exception: …` (current releases).
pub fn classify_server_text(text: &str) -> Disposition {
    match exception_code(text) {
        Some(code) if DATA_ERROR_CODES.contains(&code) => Disposition::Bisect,
        _ => Disposition::Retry,
    }
}

/// The `Code: N` of a ClickHouse exception text.
pub fn exception_code(text: &str) -> Option<u32> {
    let start = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Exponential backoff with full jitter: attempt n waits a random time in
/// `[base·2ⁿ/2, base·2ⁿ]`, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for the next delay; false if `stop` fired first.
    pub async fn wait(&mut self, stop: &tokio_util::sync::CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(self.next_delay()) => true,
            _ = stop.cancelled() => false,
        }
    }

    /// The next delay; grows until `max`.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let ceiling = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let low = ceiling / 2;
        let spread = (ceiling - low).as_millis() as u64;
        low + Duration::from_millis(if spread == 0 {
            0
        } else {
            rand::random::<u64>() % (spread + 1)
        })
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::error::Error;

    #[test]
    fn data_errors_bisect_old_and_new_spelling() {
        let old = "Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \\t before: abc, e.what() = DB::Exception";
        let new = "Code: 321. DB::Exception: Value is out of range of data type. (VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE)";
        assert_eq!(
            classify(&Error::BadResponse(old.into())),
            Disposition::Bisect
        );
        assert_eq!(
            classify(&Error::BadResponse(new.into())),
            Disposition::Bisect
        );
    }

    #[test]
    fn outages_and_table_problems_retry() {
        for text in [
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300)",
            "Code: 241. DB::Exception: Memory limit (total) exceeded",
            "Code: 60. DB::Exception: Table default.nope doesn't exist. (UNKNOWN_TABLE)",
            "Code: 497. DB::Exception: default: Not enough privileges",
            "Code: 516. DB::Exception: Authentication failed",
            "Service Unavailable",
            "",
        ] {
            assert_eq!(
                classify(&Error::BadResponse(text.into())),
                Disposition::Retry,
                "{text}"
            );
        }
        assert_eq!(classify(&Error::TimedOut), Disposition::Retry);
        assert_eq!(
            classify(&Error::Network("connection refused".into())),
            Disposition::Retry
        );
    }

    #[test]
    fn exception_code_parses_both_formats() {
        assert_eq!(exception_code("Code: 27, e.displayText()"), Some(27));
        assert_eq!(exception_code("Code: 1001. DB::Exception"), Some(1001));
        assert_eq!(exception_code("no code"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let d0 = b.next_delay();
        assert!(
            d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100),
            "{d0:?}"
        );
        let d1 = b.next_delay();
        assert!(
            d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200),
            "{d1:?}"
        );
        for _ in 0..4 {
            b.next_delay(); // 400 ms, 800 ms, then capped
        }
        for _ in 0..30 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(500) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
