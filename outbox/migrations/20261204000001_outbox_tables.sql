-- memberflow-outbox's own tables, in the database of the service that uses
-- it: the outbox and the rows its relay parked, the consumer's inbox, and
-- the leases that elect one relay (and any other single worker) per
-- database. Applied by the library's migrator, whose history is its own
-- table (`_memberflow_outbox_migrations`), after the service's migrations.
--
-- IF NOT EXISTS: auth and task created these tables in their own
-- migrations before the library had a schema of its own (auth since
-- 20261122, task since 20261203); on their databases this adopts the tables
-- as they are, with the same shape, and changes nothing. No service
-- migration creates them from now on.

CREATE TABLE IF NOT EXISTS {schema}outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    routing_key text        NOT NULL,
    -- The ordering key: a member's events are published in commit order,
    -- and parked behind its first parked row.
    {key}   {key_type}        NOT NULL,
    version     bigint      NOT NULL,
    -- The encoded body, published as is.
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
-- back (memberflow_outbox::parked).
CREATE TABLE IF NOT EXISTS {schema}outbox_parked (
    id          bigint      PRIMARY KEY, -- the row's outbox id
    event_id    uuid        NOT NULL,
    routing_key text        NOT NULL,
    {key}   {key_type}        NOT NULL,
    version     bigint      NOT NULL,
    payload     bytea       NOT NULL,
    occurred_at timestamptz NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text        NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    traceparent text,
    tracestate  text
);
CREATE INDEX IF NOT EXISTS outbox_parked_member ON {schema}outbox_parked ({key});

-- The consumer's inbox: ids of events already applied, written in the
-- transaction that applies them, so a redelivery changes nothing.
CREATE TABLE IF NOT EXISTS {schema}inbox (
    event_id    uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS inbox_received_at ON {schema}inbox (received_at);

-- Leadership leases (memberflow_infra::lease): which instance alone may act
-- for a role (`relay`, `reconcile`), under which epoch, and until when.
CREATE TABLE IF NOT EXISTS {schema}leases (
    name        text        PRIMARY KEY,
    holder      uuid        NOT NULL,
    epoch       bigint      NOT NULL,
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL,
    renewed_at  timestamptz NOT NULL
);
