-- Replica of auth's members: only what task needs (the region turns due_local
-- into an instant). Written by the event consumer and by read-through.
CREATE TABLE members (
    id            uuid        PRIMARY KEY,
    nickname      text        NOT NULL,
    region        text        NOT NULL,
    -- auth's version; an event not newer than this is ignored.
    version       bigint      NOT NULL,
    -- When auth changed the member (from the event) and when task applied it;
    -- their difference is the propagation latency.
    occurred_at   timestamptz NOT NULL,
    replicated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Inbox: ids of events already applied, written in the same transaction as
-- the replica change, so a redelivered event changes nothing.
CREATE TABLE inbox (
    event_id    uuid        PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now()
);

-- Tasks. (member_id, request_id) makes CreateTask idempotent per member.
CREATE TABLE tasks (
    id         uuid        PRIMARY KEY,
    member_id  uuid        NOT NULL REFERENCES members (id),
    request_id uuid        NOT NULL,
    title      text        NOT NULL,
    due_at     timestamptz NOT NULL,
    time_zone  text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (member_id, request_id)
);

-- ListTasks: a member's tasks, newest first, keyset-paginated.
CREATE INDEX tasks_member_newest ON tasks (member_id, created_at DESC, id DESC);
