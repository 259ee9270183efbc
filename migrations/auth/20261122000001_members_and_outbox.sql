-- Members: auth is the source of truth for identity and profile.
CREATE TABLE members (
    id            uuid PRIMARY KEY,
    -- Stored lower-cased, so uniqueness is case-insensitive.
    email         text        NOT NULL UNIQUE,
    password_hash text        NOT NULL,
    nickname      text        NOT NULL,
    -- IANA time-zone name, e.g. 'Asia/Seoul'.
    region        text        NOT NULL,
    -- 1 at signup, +1 per change; consumers use it to ignore stale events.
    version       bigint      NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Outbox: each event is written in the same transaction as the change that
-- caused it and deleted once the broker has confirmed it. `id` orders events;
-- the relay never tracks a high-water mark over it (transactions commit out of
-- sequence order), it reads whatever rows exist and deletes what it published.
CREATE TABLE outbox (
    id          bigserial   PRIMARY KEY,
    event_id    uuid        NOT NULL,
    routing_key text        NOT NULL,
    member_id   uuid        NOT NULL,
    version     bigint      NOT NULL,
    -- The encoded protobuf body, published as is.
    payload     bytea       NOT NULL,
    occurred_at timestamptz NOT NULL
);

-- Wakes relays in other auth instances (LISTEN auth_outbox). NOTIFY is sent
-- at commit, so a rolled-back signup wakes nobody.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('auth_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
