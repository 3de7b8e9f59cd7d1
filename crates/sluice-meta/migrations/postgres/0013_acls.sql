-- Kafka ACL bindings, with Kafka's wire codes for resource type, pattern type, operation
-- and permission. One row per binding; creating the same binding twice keeps one.
CREATE TABLE acls (
    resource_type  INTEGER NOT NULL,
    resource_name  TEXT NOT NULL,
    pattern_type   INTEGER NOT NULL,
    principal      TEXT NOT NULL,
    host           TEXT NOT NULL,
    operation      INTEGER NOT NULL,
    permission     INTEGER NOT NULL,
    PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation, permission)
);
