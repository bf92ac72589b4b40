-- Between runs: every configuration starts from empty tables and a fresh
-- checkpoint, so no run pays for the previous one's WAL or bloat.
TRUNCATE bench.plain, bench.fk, bench.logrow, public.templates, relay.events;
CHECKPOINT;
