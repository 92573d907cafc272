-- Webhook deliveries already turned into jobs: a replay (the same delivery id, or the same
-- signed body) answers the first delivery's job instead of making another.
CREATE TABLE deliveries (
    key         TEXT PRIMARY KEY,  -- "<forge>:id:<delivery id>" or "<forge>:body:<sha256>"
    job_id      TEXT NOT NULL REFERENCES jobs (id),
    received_at INTEGER NOT NULL
);
