-- Brokers re-read the retained messages others updated since a time (sluice-mqtt retained.rs).
CREATE INDEX mqtt_retained_updated ON mqtt_retained (updated_ms);
