-- Where an interrupted full resync resumes: the last member id it applied.
-- One row per resync kind; deleted when a resync completes.
CREATE TABLE resync_checkpoint (
    name       text        PRIMARY KEY,
    last_id    uuid        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
