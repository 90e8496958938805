-- `sledger log --type T` and `--actor A` read only the events they print. Never edit this file
-- once released. (A secret's events already have `events_by_secret`.)
CREATE INDEX IF NOT EXISTS events_by_type ON events (event_type, seq);
CREATE INDEX IF NOT EXISTS events_by_actor ON events (actor, seq);
