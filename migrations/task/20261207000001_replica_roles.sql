-- The member's role and suspension, as auth's events and ListMembers carry
-- them. No CHECK on the role: a role this version does not know is kept as
-- it came and grants nothing (only 'admin' grants anything). Rows from
-- before are members, not suspended, as they are in auth.
ALTER TABLE members
    ADD COLUMN role text NOT NULL DEFAULT 'member',
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspended_reason text;
