-- PostgreSQL twin of migrations/sqlite: same tables and columns; only types that differ (BIGSERIAL) change.
CREATE TABLE cluster (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE topics (
    topic_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    configs    TEXT NOT NULL DEFAULT '{}',
    created_ms BIGINT NOT NULL
);

CREATE TABLE partitions (
    topic_id         TEXT NOT NULL,
    partition        INTEGER NOT NULL,
    log_start_offset BIGINT NOT NULL DEFAULT 0,
    high_watermark   BIGINT NOT NULL DEFAULT 0,
    leader_epoch     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition)
);

-- Where each leader epoch began, for OffsetForLeaderEpoch.
CREATE TABLE partition_epochs (
    topic_id     TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    epoch        INTEGER NOT NULL,
    start_offset BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition, epoch)
);

CREATE TABLE objects (
    object_key TEXT PRIMARY KEY,
    size       BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- The offset index: one row per stored record batch.
CREATE TABLE batches (
    topic_id      TEXT NOT NULL,
    partition     INTEGER NOT NULL,
    base_offset   BIGINT NOT NULL,
    last_offset   BIGINT NOT NULL,
    max_timestamp BIGINT NOT NULL,
    object_key    TEXT NOT NULL,
    position      BIGINT NOT NULL,
    length        INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)
);
CREATE INDEX batches_by_object ON batches (object_key);

CREATE TABLE producer_ids (
    id         BIGSERIAL PRIMARY KEY,
    created_ms BIGINT NOT NULL
);

-- Idempotent-producer state per partition: epoch and the last five batches (JSON).
CREATE TABLE producer_state (
    topic_id    TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    producer_id BIGINT NOT NULL,
    epoch       INTEGER NOT NULL,
    recent      TEXT NOT NULL,
    updated_ms  BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition, producer_id)
);
