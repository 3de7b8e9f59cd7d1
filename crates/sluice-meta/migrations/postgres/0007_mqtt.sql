-- MQTT gateway (sluice-mqtt): rules, downlink progress and retained messages.
CREATE TABLE mqtt_rules (
    name         TEXT PRIMARY KEY,
    sql_text     TEXT NOT NULL,
    kafka_topic  TEXT NOT NULL,
    key_template TEXT NOT NULL,
    created_ms   BIGINT NOT NULL
);

-- Next offset of the commands topic to publish to devices, per partition.
CREATE TABLE mqtt_downlink_offsets (
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- The retained message of each MQTT topic, so that it survives a restart.
CREATE TABLE mqtt_retained (
    topic      TEXT PRIMARY KEY,
    qos        INTEGER NOT NULL,
    payload    BYTEA NOT NULL,
    properties TEXT NOT NULL,
    updated_ms BIGINT NOT NULL
);
