-- How often a row has failed on its own (unroutable while the rows around it
-- were routed), and the last such failure. A row that reaches
-- relay.park_after_attempts is parked instead of holding up the outbox.
ALTER TABLE outbox
    ADD COLUMN attempts   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_error text;

-- Parked rows: outbox rows the relay gave up on, kept with why, for an
-- operator to inspect (`memberflow-admin outbox parked`) and put back
-- (`memberflow-admin outbox replay`). A member's later rows are parked behind
-- its first parked row, so no newer event of that member overtakes it.
CREATE TABLE outbox_parked (
    id          bigint      PRIMARY KEY, -- the row's outbox id
    event_id    uuid        NOT NULL,
    routing_key text        NOT NULL,
    member_id   uuid        NOT NULL,
    version     bigint      NOT NULL,
    payload     bytea       NOT NULL,
    occurred_at timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now()
);

-- The relay checks every batch against parked members.
CREATE INDEX outbox_parked_member ON outbox_parked (member_id);
