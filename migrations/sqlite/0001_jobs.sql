-- The job server's store: agents, jobs with their offer/lease/log state, and job events.
-- Times are Unix milliseconds.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    labels        TEXT NOT NULL,      -- JSON array
    capacity      INTEGER NOT NULL,
    token_hash    TEXT NOT NULL UNIQUE,
    registered_at INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL
);

CREATE TABLE jobs (
    id            TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL UNIQUE, -- submission order
    spec          TEXT NOT NULL,           -- JSON: source, config, tasks, env, labels, timeout
    labels        TEXT NOT NULL,           -- JSON array an agent must cover
    state         TEXT NOT NULL,           -- queued offered running succeeded failed cancelled timed_out lost error
    agent_id      TEXT,
    offer_id      TEXT,
    offer_expires INTEGER,
    lease_id      TEXT,
    lease_expires INTEGER,
    cancel_reason TEXT,
    log_committed INTEGER NOT NULL DEFAULT 0,
    result        TEXT,                    -- JSON, as the agent reported it
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX jobs_by_state ON jobs (state, seq);

CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    seq    INTEGER NOT NULL,
    body   TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Server-wide values that must survive restarts (the secret job tokens derive from).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
