-- One row per login (one device): what a refresh token keeps alive. Ended
-- rows stay until their refresh tokens could no longer work anyway
-- (expires_at), so a late reuse is still recognised as reuse.
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    member_id uuid NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    -- The `user-agent` of the Login that started it.
    client text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL,
    last_refreshed_at timestamptz NOT NULL,
    -- The absolute end (token.refresh_lifetime_days after the login).
    expires_at timestamptz NOT NULL,
    -- When the last access token issued in it expires.
    access_expires_at timestamptz NOT NULL,
    ended_at timestamptz
);
CREATE INDEX sessions_member_idx ON sessions (member_id, created_at);

-- Every refresh token a session was given, by the SHA-256 of the token: the
-- token itself is never stored. The one with rotated_at NULL is current;
-- presenting a rotated one is reuse (or, within the grace, a retry).
CREATE TABLE refresh_tokens (
    hash bytea PRIMARY KEY,
    session_id uuid NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    rotated_at timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
