-- Run once by the ClickHouse image on first start (docker-entrypoint-initdb.d).
CREATE TABLE IF NOT EXISTS default.events
(
    rec_id        UInt64,
    task_for      String,
    function_type String,
    data          String,
    _id           String,
    _enqueued_at  DateTime
)
ENGINE = MergeTree
ORDER BY (_enqueued_at, rec_id);
