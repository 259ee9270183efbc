-- When the member's sessions were last ended (Logout, ChangePassword), and the
-- member version that produced. Access tokens issued before are refused.
ALTER TABLE members
    ADD COLUMN sessions_not_before timestamptz,
    ADD COLUMN sessions_version bigint NOT NULL DEFAULT 0;
