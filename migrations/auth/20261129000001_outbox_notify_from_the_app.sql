-- The outbox no longer NOTIFYs from a trigger. PostgreSQL serialises the
-- commits of every transaction that sent a NOTIFY (one lock, held through
-- the commit's WAL flush), so a per-signup trigger capped concurrent signups
-- (0.63x the rate without it at 32 clients). auth now wakes its own relay in
-- process, and sends NOTIFY auth_outbox in a separate, coalesced transaction
-- only when another instance leads (auth/src/outbox/wake.rs).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
