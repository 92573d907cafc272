-- The job server's store on PostgreSQL, shared by every replica: agents, jobs with their
-- offer/lease/log state, job events, log chunks, webhook deliveries. Times are Unix
-- milliseconds of the database's clock (dockhand_now_ms), so replicas agree on lapses.
CREATE FUNCTION dockhand_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;

CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    labels        TEXT[] NOT NULL,
    capacity      BIGINT NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    registered_at BIGINT NOT NULL,
    last_seen     BIGINT NOT NULL
);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    seq           BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE, -- submission order
    spec          TEXT NOT NULL,          -- JSON: source, config, tasks, env, labels, timeout
    labels        TEXT[] NOT NULL,        -- an agent must hold all of them
    state         TEXT NOT NULL,          -- queued offered running succeeded failed cancelled timed_out lost error
    agent_id      TEXT,
    offer_id      TEXT,
    offer_expires BIGINT,
    lease_id      TEXT,
    lease_expires BIGINT,
    cancel_reason TEXT,
    log_committed BIGINT NOT NULL DEFAULT 0,
    log_digest    BYTEA,                  -- the sha256 state over the committed log
    result        TEXT,                   -- JSON, as the agent reported it
    created_at    BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT
);
CREATE INDEX jobs_queued ON jobs (seq) WHERE state = 'queued';
CREATE INDEX jobs_offered ON jobs (offer_expires) WHERE state = 'offered';
CREATE INDEX jobs_running ON jobs (lease_expires) WHERE state = 'running';

-- A job's log, chunk by chunk as appended: `start` is the chunk's first byte's offset.
CREATE TABLE log_chunks (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    start  BIGINT NOT NULL,
    bytes  BYTEA NOT NULL,
    PRIMARY KEY (job_id, start)
);

CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq    BIGINT NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Server-wide values that must survive restarts (the secret job tokens derive from).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Webhook deliveries already turned into jobs (see the SQLite schema).
CREATE TABLE deliveries (
    key         TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    received_at BIGINT NOT NULL
);
