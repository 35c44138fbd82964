//! Retry or poison? The one place that decides what a failed insert means.
//!
//! Three answers ([`classify`]):
//! - **Retry**: ClickHouse did not answer, or answered that *it* is unwell
//!   (overloaded, out of memory, its replication down) or that it cannot
//!   serve this sink at all (unknown table, no rights). Nothing is learned
//!   about the rows: the endpoint is marked down, the insert moves on to
//!   another endpoint and is retried with backoff, never escalated, and no
//!   row is ever dead-lettered for it.
//! - **Bisect**: the server refused the insert with an error that names bad
//!   data (a parse error, a value out of range, …): the batch is split at
//!   once to isolate the rows.
//! - **Escalate**: the server refused the insert for a reason that may or
//!   may not depend on the rows (an error raised by a materialized view,
//!   too many partitions in one block, a decimal overflow in an expression,
//!   …). The batch is retried; one that fails the same way
//!   `clickhouse.bisect_after` times is bisected ([`crate::sink::clickhouse::escalation`]).
//!
//! A refusal (Bisect or Escalate) says nothing about the endpoint: it stays
//! up, and the batch is not walked across the other endpoints (they hold the
//! same table and would refuse it the same way).

/// What to do with a batch whose insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Disposition {
    /// The server or the path to it is unwell (down, overloaded, timing out,
    /// misconfigured): keep the batch, back off, try again. Nothing is acked.
    Retry,
    /// The data itself was refused: split the batch to isolate the bad rows.
    Bisect,
    /// Refused for a reason that may depend on the rows: retry, and bisect
    /// once the batch has failed the same way `bisect_after` times.
    Escalate,
}

impl Disposition {
    /// The server answered and refused the insert (Bisect or Escalate).
    pub(crate) fn is_refusal(self) -> bool {
        self != Disposition::Retry
    }
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

/// Exception codes that say the server is unwell or cannot serve the sink
/// at all, whatever rows are sent: retried (failing over), never escalated.
/// Escalating them could dead-letter a healthy row: a single row whose
/// insert met a passing overload while another part of its batch landed
/// would look like poison.
const SERVER_TROUBLE_CODES: &[u32] = &[
    60,  // UNKNOWN_TABLE (maybe on this endpoint only)
    81,  // UNKNOWN_DATABASE
    159, // TIMEOUT_EXCEEDED
    164, // READONLY
    173, // CANNOT_ALLOCATE_MEMORY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    202, // TOO_MANY_SIMULTANEOUS_QUERIES
    203, // NO_FREE_CONNECTION
    209, // SOCKET_TIMEOUT
    210, // NETWORK_ERROR
    225, // NO_ZOOKEEPER
    236, // ABORTED
    241, // MEMORY_LIMIT_EXCEEDED
    242, // TABLE_IS_READ_ONLY (a replica without its ZooKeeper session)
    252, // TOO_MANY_PARTS (but see `is_partition_limit`)
    285, // TOO_FEW_LIVE_REPLICAS
    286, // UNSATISFIED_QUORUM_FOR_PREVIOUS_WRITE
    319, // UNKNOWN_STATUS_OF_INSERT
    394, // QUERY_WAS_CANCELLED
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
    999, // KEEPER_EXCEPTION
];

/// Codes that can mean the table's columns changed under the running flow
/// (ALTER ADD/DROP/MODIFY COLUMN): the sink re-reads the schema before
/// judging the error. 18.16 answers a block column of the old type with
/// BAD_CAST; current releases with TYPE_MISMATCH or NO_SUCH_COLUMN_IN_TABLE.
const SCHEMA_CHANGE_CODES: &[u32] = &[
    8,   // THERE_IS_NO_COLUMN
    10,  // NOT_FOUND_COLUMN_IN_BLOCK
    16,  // NO_SUCH_COLUMN_IN_TABLE
    47,  // UNKNOWN_IDENTIFIER
    53,  // TYPE_MISMATCH
    368, // BAD_CAST
];

/// Decides between retrying, bisecting and escalating a failed insert.
///
/// Only an exception the server sent (`Code: N` in the answer) can refuse
/// data. Everything else — no connection, a timeout, an answer without an
/// exception code (a proxy's 502), and the crate's own errors, among them
/// `Error::Custom`, which an insert returns when its background task died —
/// says nothing about the rows and is retried.
pub(crate) fn classify(error: &clickhouse::error::Error) -> Disposition {
    use clickhouse::error::Error as E;
    match error {
        E::BadResponse(text) => classify_server_text(text),
        _ => Disposition::Retry,
    }
}

/// Classifies a ClickHouse exception text such as
/// `Code: 27, e.displayText() = DB::Exception: Cannot parse input …` (18.x)
/// or `Code: 27. DB::Exception: …` (current releases).
pub(crate) fn classify_server_text(text: &str) -> Disposition {
    match exception_code(text) {
        None => Disposition::Retry,
        Some(252) if is_partition_limit(text) => Disposition::Escalate,
        Some(code) if SERVER_TROUBLE_CODES.contains(&code) => Disposition::Retry,
        Some(code) if DATA_ERROR_CODES.contains(&code) => Disposition::Bisect,
        Some(_) => Disposition::Escalate,
    }
}

/// "Too many partitions for single INSERT block": code 252 like "too many
/// parts", but about the rows of the block, which bisecting splits up.
pub(crate) fn is_partition_limit(text: &str) -> bool {
    text.contains("partitions for single INSERT block")
}

/// An exception with this code may mean the table's columns changed (see
/// [`SCHEMA_CHANGE_CODES`]).
pub(crate) fn may_mean_schema_changed(code: u32) -> bool {
    SCHEMA_CHANGE_CODES.contains(&code)
}

/// The `Code: N` of a ClickHouse exception text.
pub(crate) fn exception_code(text: &str) -> Option<u32> {
    let start = text.find("Code: ")? + "Code: ".len();
    let digits: String = text[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
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
            "Code: 252, e.displayText() = DB::Exception: Too many parts (300). Merges are processing significantly slower than inserts.",
            "Code: 241. DB::Exception: Memory limit (total) exceeded",
            "Code: 60. DB::Exception: Table default.nope doesn't exist. (UNKNOWN_TABLE)",
            "Code: 497. DB::Exception: default: Not enough privileges",
            "Code: 516. DB::Exception: Authentication failed",
            "Code: 242. DB::Exception: Table is in readonly mode",
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

    /// Item 17: only an exception the server sent refuses data; the
    /// crate's own errors (a failed insert task comes back as `Custom`)
    /// are retried, so they can never dead-letter a row.
    #[test]
    fn a_failed_insert_task_is_not_a_data_error() {
        let custom = Error::Custom("unexpected error: task 12 was cancelled".into());
        assert_eq!(classify(&custom), Disposition::Retry);
        for other in [
            Error::DataFormat("truncated block in the answer".into()),
            Error::SchemaMismatch("validation".into()),
            Error::Other("io".into()),
        ] {
            assert_eq!(classify(&other), Disposition::Retry, "{other}");
            assert!(!classify(&other).is_refusal());
        }
    }

    /// Errors the data lists do not name, raised for some rows only (a
    /// materialized view's expression, too many partitions in one block,
    /// a decimal overflow): retried, then escalated, never a plain retry
    /// forever; and not a reason to mark the endpoint down.
    #[test]
    fn unknown_server_errors_escalate() {
        for text in [
            "Code: 153, e.displayText() = DB::Exception: Division by zero: while pushing to view default.mv3, e.what() = DB::Exception",
            "Code: 407, e.displayText() = DB::Exception: Decimal convert overflow: while pushing to view default.mv4, e.what() = DB::Exception",
            "Code: 252. DB::Exception: Too many partitions for single INSERT block (more than 100). (TOO_MANY_PARTS)",
            "Code: 1001. DB::Exception: std::exception in a view",
        ] {
            let d = classify(&Error::BadResponse(text.into()));
            assert_eq!(d, Disposition::Escalate, "{text}");
            assert!(d.is_refusal());
        }
    }

    #[test]
    fn schema_change_hints() {
        let hint = |t: &str| exception_code(t).is_some_and(may_mean_schema_changed);
        assert!(hint("Code: 368, e.displayText() = DB::Exception: Bad cast from type DB::ColumnString to DB::ColumnVector<int>"));
        assert!(hint("Code: 16. DB::Exception: No such column gone in table default.t. (NO_SUCH_COLUMN_IN_TABLE)"));
        assert!(hint("Code: 53. DB::Exception: Type mismatch for column x. Column has type Int32, got type String"));
        assert!(!hint("Code: 27. DB::Exception: Cannot parse input"));
        // 368 is not a data error: without a schema change it escalates.
        assert_eq!(
            classify(&Error::BadResponse(
                "Code: 368, e.displayText() = DB::Exception: Bad cast".into()
            )),
            Disposition::Escalate
        );
    }

    #[test]
    fn exception_code_parses_both_formats() {
        assert_eq!(exception_code("Code: 27, e.displayText()"), Some(27));
        assert_eq!(exception_code("Code: 1001. DB::Exception"), Some(1001));
        assert_eq!(exception_code("no code"), None);
    }
}
