-- A version per broker of its rows in mqtt_routes, moved in the transaction that changes
-- them, so that other brokers re-read a broker's filters only when they changed.
CREATE TABLE mqtt_route_versions (
    node_id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL
);
