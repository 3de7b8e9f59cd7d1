-- Cluster mode: brokers with heartbeat leases, named leases (the controller's),
-- and a leader per partition and per group-coordinator shard. Lease times are on
-- the database's clock, so brokers' clocks need not agree.
CREATE TABLE brokers (
    node_id          INTEGER PRIMARY KEY,
    host             TEXT NOT NULL,
    port             INTEGER NOT NULL,
    http             TEXT NOT NULL DEFAULT '',
    started_ms       BIGINT NOT NULL,
    lease_expires_ms BIGINT NOT NULL,
    draining         INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     INTEGER NOT NULL,
    epoch      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);

-- leader -1: nobody leads yet. next_leader: where the controller wants the
-- partition to move; the current leader flushes, then hands it over.
ALTER TABLE partitions ADD COLUMN leader INTEGER NOT NULL DEFAULT -1;
ALTER TABLE partitions ADD COLUMN next_leader INTEGER NOT NULL DEFAULT -1;

-- A group belongs to shard crc32c(group id) % 16; the shard's leader coordinates it.
CREATE TABLE group_shards (
    shard        INTEGER PRIMARY KEY,
    leader       INTEGER NOT NULL DEFAULT -1,
    leader_epoch INTEGER NOT NULL DEFAULT 0,
    next_leader  INTEGER NOT NULL DEFAULT -1
);
INSERT INTO group_shards (shard) VALUES (0), (1), (2), (3), (4), (5), (6), (7),
    (8), (9), (10), (11), (12), (13), (14), (15);

-- Bumped by every change brokers must pick up (topics, configs, leaders), so
-- that they reload only when something changed.
CREATE TABLE topology (
    id      INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO topology (id, version) VALUES (1, 0);
