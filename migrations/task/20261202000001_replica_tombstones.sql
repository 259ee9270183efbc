-- A member auth deleted stays in the replica as a tombstone: id, version and
-- deletion time, with nickname and region emptied, so that the version guard
-- refuses every older event and the member's tokens stay refused. The
-- member's tasks are deleted with it.
ALTER TABLE members ADD COLUMN deleted_at timestamptz;
ALTER TABLE members ADD CONSTRAINT members_tombstone_empty
    CHECK (deleted_at IS NULL OR (nickname = '' AND region = ''));
-- The reconciler's sweep finds tombstones that still have tasks through it.
CREATE INDEX members_tombstones ON members (id) WHERE deleted_at IS NOT NULL;
