-- task's own transactional outbox (memberflow_outbox), for the erasure
-- saga's receipts (task.v1.MemberErased on member.erasures): each is written
-- in the transaction that applies the deletion, and published by task's
-- relay, one leader per database under the `relay` lease. The same shape as
-- auth's outbox and parked rows.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    routing_key text        NOT NULL,
    member_id   uuid        NOT NULL,
    version     bigint      NOT NULL,
    -- The encoded protobuf body, published as is.
    payload     bytea       NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- Failures of this row on its own, and the last one.
    attempts    integer     NOT NULL DEFAULT 0,
    last_error  text,
    -- The W3C trace context of the change that wrote it.
    traceparent text,
    tracestate  text
);

-- Rows the relay gave up on, with why, for an operator to inspect and put
-- back (memberflow_outbox::parked); a member's later rows are parked behind
-- its first.
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
    parked_at   timestamptz NOT NULL DEFAULT now(),
    traceparent text,
    tracestate  text
);
CREATE INDEX outbox_parked_member ON outbox_parked (member_id);
