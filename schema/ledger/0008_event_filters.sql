-- `sledger log --actor A` reads only the events it prints. Never edit this file once released.
-- (A secret's events have `events_by_secret` (0001), a type's `events_by_type` (0005).)
CREATE INDEX IF NOT EXISTS events_by_actor ON events (actor, seq);
