-- Leadership leases: which instance alone may act for a role (the reconciler, `reconcile`),
-- under which epoch, and until when. The holder renews expires_at; once
-- PostgreSQL's clock passes it, a standby takes the row and bumps the epoch,
-- and the epoch fences every write of the old holder (memberflow-runtime's
-- lease module). Replaces a session advisory lock, which a paused process
-- keeps for as long as its TCP session lives.
CREATE TABLE leases (
    name        text PRIMARY KEY,
    holder      uuid NOT NULL,
    epoch       bigint NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);
