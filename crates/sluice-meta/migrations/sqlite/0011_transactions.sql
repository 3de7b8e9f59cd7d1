-- Transactions: the coordinator's state per transactional.id, offsets sent within a
-- transaction (visible to OffsetFetch once it commits), each partition's open transaction
-- per producer (its first offset, which bounds the last stable offset), and the aborted
-- transactions a read_committed reader must filter.
ALTER TABLE producer_state ADD COLUMN txn_first_offset BIGINT NOT NULL DEFAULT -1;

CREATE TABLE aborted_txns (
    topic_id     TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    producer_id  BIGINT NOT NULL,
    first_offset BIGINT NOT NULL,
    last_offset  BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition, last_offset)
);

CREATE TABLE transactions (
    transactional_id TEXT PRIMARY KEY,
    producer_id      BIGINT NOT NULL,
    producer_epoch   INTEGER NOT NULL,
    state            TEXT NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    started_ms       BIGINT NOT NULL,
    updated_ms       BIGINT NOT NULL,
    -- JSON: [["topic", partition], ...] and ["group", ...]
    partitions       TEXT NOT NULL,
    txn_groups       TEXT NOT NULL,
    version          BIGINT NOT NULL
);
CREATE INDEX transactions_by_state ON transactions (state);

CREATE TABLE txn_offsets (
    group_id         TEXT NOT NULL,
    topic            TEXT NOT NULL,
    partition        INTEGER NOT NULL,
    producer_id      BIGINT NOT NULL,
    committed_offset BIGINT NOT NULL,
    leader_epoch     INTEGER NOT NULL,
    metadata         TEXT,
    commit_ms        BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic, partition, producer_id)
);
