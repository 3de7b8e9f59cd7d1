-- Consumer groups: the durable part of a group (membership lives with its coordinator).
CREATE TABLE groups (
    group_id      TEXT PRIMARY KEY,
    protocol_type TEXT NOT NULL DEFAULT '',
    generation    INTEGER NOT NULL DEFAULT 0,
    -- When the group last had no members; NULL while it has some.
    empty_since_ms BIGINT,
    updated_ms    BIGINT NOT NULL
);

CREATE TABLE group_offsets (
    group_id     TEXT NOT NULL,
    topic        TEXT NOT NULL,
    partition    INTEGER NOT NULL,
    committed_offset BIGINT NOT NULL,
    leader_epoch INTEGER NOT NULL DEFAULT -1,
    metadata     TEXT,
    commit_ms    BIGINT NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
);
