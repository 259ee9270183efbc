-- Sessions auth has ended one by one (MemberSessionEnded), by the base64url
-- SHA-256 of the session id: an access token whose `sid` hashes to a row here
-- is refused. Insert-only and apart from the replica's version guard, so no
-- newer MemberChanged can hide an entry. Rows are pruned after expires_at,
-- when the session's last access token has expired, so the table stays
-- bounded by the sessions ended within one access-token lifetime.
CREATE TABLE ended_sessions (
    session_hash text PRIMARY KEY,
    member_id uuid NOT NULL,
    ended_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX ended_sessions_expires_idx ON ended_sessions (expires_at);
