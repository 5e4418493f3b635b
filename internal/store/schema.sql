-- custody's reference schema for confidential transactions in PostgreSQL
-- (custodyctl store init applies it; docs/store.md explains each part).
-- Public fields are ordinary columns; the envelope is its binary form; the
-- header facts that say which key versions a row needs are kept in sync by
-- every write of internal/store, in the same SQL transaction, so that
-- "which rows still need a rewrap" is an index scan, never a decrypt.

CREATE TABLE IF NOT EXISTS confidential_transactions (
    transaction_id     text PRIMARY KEY,
    job_id             text NOT NULL,
    status             text NOT NULL DEFAULT '',
    public_data        jsonb NOT NULL DEFAULT '{}',
    envelope           bytea NOT NULL,             -- binary form (docs/envelope.md)
    envelope_version   smallint NOT NULL,          -- the format version in the envelope
    escrow_key_version integer NOT NULL,           -- the escrow stanza's key version
    row_version        bigint NOT NULL DEFAULT 1,  -- bumped by every write: optimistic concurrency
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS confidential_transactions_job_id ON confidential_transactions (job_id);
CREATE INDEX IF NOT EXISTS confidential_transactions_status ON confidential_transactions (status);
CREATE INDEX IF NOT EXISTS confidential_transactions_escrow ON confidential_transactions (escrow_key_version);

-- One row per participant stanza of a transaction's envelope.
CREATE TABLE IF NOT EXISTS confidential_transaction_stanzas (
    transaction_id text NOT NULL REFERENCES confidential_transactions ON DELETE CASCADE,
    participant    text NOT NULL,
    key_version    integer NOT NULL,
    PRIMARY KEY (transaction_id, participant)
);
-- "rows whose stanza for participant P is below version V"
CREATE INDEX IF NOT EXISTS confidential_transaction_stanzas_version
    ON confidential_transaction_stanzas (participant, key_version);
