-- Roles and suspension (SetRole, SuspendMember, ReinstateMember). Every
-- existing member becomes a `member`, not suspended. The closed set of roles
-- is checked here too, so no writer can store a role auth does not know.
-- A suspension is its time and its reason together, or neither; a tombstone
-- keeps neither (the reason is about a person).
ALTER TABLE members
    ADD COLUMN role text NOT NULL DEFAULT 'member' CHECK (role IN ('member', 'admin')),
    ADD COLUMN suspended_at timestamptz,
    ADD COLUMN suspended_reason text,
    ADD CONSTRAINT members_suspension_whole
        CHECK ((suspended_at IS NULL) = (suspended_reason IS NULL));

-- The "last active admin" rule counts these.
CREATE INDEX members_active_admins ON members (id)
    WHERE role = 'admin' AND suspended_at IS NULL AND deleted_at IS NULL;
