-- The replica of auth's members.sessions_not_before / sessions_version: task
-- refuses access tokens issued before a member's sessions were ended.
ALTER TABLE members
    ADD COLUMN sessions_not_before timestamptz,
    ADD COLUMN sessions_version bigint NOT NULL DEFAULT 0;
