-- Security: SCRAM credentials (salted keys only, never passwords) per user and mechanism,
-- and every Kafka listener a broker advertises ("PLAINTEXT://h:p,SASL_SSL://h:p").
CREATE TABLE scram_credentials (
    user_name   TEXT NOT NULL,
    mechanism   TEXT NOT NULL,
    salt        TEXT NOT NULL,
    stored_key  TEXT NOT NULL,
    server_key  TEXT NOT NULL,
    iterations  INTEGER NOT NULL,
    PRIMARY KEY (user_name, mechanism)
);

ALTER TABLE brokers ADD COLUMN listeners TEXT NOT NULL DEFAULT '';
