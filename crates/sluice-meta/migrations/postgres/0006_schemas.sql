-- Schema registry. A schema (type, normalised text, references) gets one id for
-- good: ids come from the database so every broker agrees, and are never reused.
CREATE TABLE schema_registry_schemas (
    id          BIGSERIAL PRIMARY KEY,
    schema_type TEXT NOT NULL,
    -- sha256 of type, normalised text and references: equal schemas share an id.
    fingerprint TEXT NOT NULL UNIQUE,
    schema_text TEXT NOT NULL,
    -- JSON array of {"name","subject","version"}.
    refs        TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

-- A subject's versions. Soft-deleted versions keep their row (deleted = 1) until
-- a permanent delete removes it.
CREATE TABLE schema_registry_versions (
    subject    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    schema_id  BIGINT NOT NULL,
    deleted    INTEGER NOT NULL DEFAULT 0,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (subject, version)
);
CREATE INDEX schema_registry_versions_by_id ON schema_registry_versions (schema_id);

-- Which (subject, version) a schema's references point at, for /referencedby and
-- to refuse deleting what another schema still uses.
CREATE TABLE schema_registry_references (
    schema_id   BIGINT NOT NULL,
    name        TEXT NOT NULL,
    ref_subject TEXT NOT NULL,
    ref_version INTEGER NOT NULL,
    PRIMARY KEY (schema_id, name)
);
CREATE INDEX schema_registry_references_by_target ON schema_registry_references (ref_subject, ref_version);

-- Compatibility levels and modes; subject '' holds the global setting.
CREATE TABLE schema_registry_settings (
    subject TEXT NOT NULL,
    kind    TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (subject, kind)
);
