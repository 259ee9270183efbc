-- Account deletion (DeleteAccount): the member row becomes a tombstone in
-- place. It keeps its id, its version (so the version guard of every replica
-- keeps counting from it: a late or replayed older event stays older) and
-- `deleted_at`; email, password hash, nickname and region are cleared.
--
-- In place rather than a tombstones table: ListMembers and DigestMembers page
-- and digest one table in id order, GetMember and the version sequence stay
-- one row per id, and a UNIQUE column holds any number of NULLs, so the email
-- is free for a new signup at once.
ALTER TABLE members
    ALTER COLUMN email DROP NOT NULL,
    ALTER COLUMN password_hash DROP NOT NULL,
    ALTER COLUMN nickname DROP NOT NULL,
    ALTER COLUMN region DROP NOT NULL,
    ADD COLUMN deleted_at timestamptz,
    -- A row is live with every personal column, or a tombstone with none.
    ADD CONSTRAINT members_live_or_tombstone CHECK (
        (deleted_at IS NULL AND email IS NOT NULL AND password_hash IS NOT NULL
             AND nickname IS NOT NULL AND region IS NOT NULL)
        OR (deleted_at IS NOT NULL AND email IS NULL AND password_hash IS NULL
             AND nickname IS NULL AND region IS NULL));
