-- Jobs a webhook made remember where they come from on the forge, and the last state
-- their commit status was queued for; statuses and notifications wait in the outbox.
ALTER TABLE jobs ADD COLUMN origin TEXT;   -- JSON ForgeOrigin
ALTER TABLE jobs ADD COLUMN stream TEXT;   -- ForgeOrigin::stream: one pull request or ref
ALTER TABLE jobs ADD COLUMN reported TEXT; -- the state last turned into outbox entries
CREATE INDEX jobs_by_stream ON jobs (stream) WHERE stream IS NOT NULL;
CREATE INDEX jobs_to_report ON jobs (seq) WHERE origin IS NOT NULL AND reported IS NOT state;

-- What is still to be sent to forges and notification hooks: entries of one `ordering`
-- (a commit's statuses, a stream's notifications) go out one at a time in id order.
CREATE TABLE outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ordering   TEXT NOT NULL,
    repository TEXT NOT NULL,   -- the settings entry whose forge, token and hooks apply
    body       TEXT NOT NULL,   -- JSON Outgoing
    attempts   INTEGER NOT NULL DEFAULT 0,
    due_at     INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_by_ordering ON outbox (ordering, id);

-- Whether a stream's last finished job succeeded: a success after a failure is a recovery.
CREATE TABLE stream_outcomes (
    stream    TEXT PRIMARY KEY,
    succeeded INTEGER NOT NULL
);
