-- The erasure saga (docs/deletion.md). One row per deleted account: which
-- services must confirm the erasure, when it was requested and completed.
-- Ids and times only, no personal data: it is the audit trail, kept for
-- erasure.record_retention_days after completion.
CREATE TABLE erasures (
    member_id    uuid        PRIMARY KEY,
    -- The version of the member's tombstone.
    version      bigint      NOT NULL,
    requested_at timestamptz NOT NULL,
    -- erasure.expected_services when it was requested.
    expected     text[]      NOT NULL,
    -- Set once, in the transaction of the last expected receipt.
    completed_at timestamptz,
    -- The last `memberflow-admin erasures retry`.
    retried_at   timestamptz
);

-- The gauges and `erasures --pending` read the pending ones; the prune the
-- completed ones.
CREATE INDEX erasures_pending ON erasures (requested_at) WHERE completed_at IS NULL;
CREATE INDEX erasures_completed ON erasures (completed_at) WHERE completed_at IS NOT NULL;

-- Each service's receipt, at most one per erasure.
CREATE TABLE erasure_receipts (
    member_id   uuid        NOT NULL REFERENCES erasures (member_id) ON DELETE CASCADE,
    service     text        NOT NULL,
    -- The receipt's event id, and the tombstone version it confirms.
    event_id    uuid        NOT NULL,
    version     bigint      NOT NULL,
    -- When the service committed its erasure, and when auth recorded it.
    erased_at   timestamptz NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (member_id, service)
);

-- The receipt consumer's inbox (memberflow_outbox::inbox): ids of receipts
-- already applied, written in the same transaction.
CREATE TABLE inbox (
    event_id    uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_received_at ON inbox (received_at);
