-- Downlink progress per broker: every broker's gateway publishes every partition of the
-- commands topic to the devices connected to it (sluice-mqtt downlink.rs).
-- mqtt_downlink_offsets holds the progress of earlier builds, read once as a start.
CREATE TABLE mqtt_downlink_positions (
    node_id     INTEGER NOT NULL,
    topic       TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (node_id, topic, partition)
);

-- The topic filters each broker has subscribers for (sluice-mqtt routes.rs).
CREATE TABLE mqtt_routes (
    node_id INTEGER NOT NULL,
    filter  TEXT NOT NULL,
    PRIMARY KEY (node_id, filter)
);
