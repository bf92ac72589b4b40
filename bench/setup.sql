-- Fixture for bench/producer-cost.sh. Run after `migrate up`; safe to re-run.

-- (a) the baseline: the same columns, defaults, checks and primary key as
-- public.templates, but no trigger of any kind (LIKE copies no foreign key,
-- and foreign keys are triggers too).
CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.plain;
CREATE TABLE bench.plain (LIKE public.templates INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);

-- (fk) the baseline of the app's own check: the plain table plus the
-- foreign key of created_by, the one check PostgreSQL gives for free.
DROP TABLE IF EXISTS bench.fk;
CREATE TABLE bench.fk (LIKE public.templates INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES);
ALTER TABLE bench.fk ADD FOREIGN KEY (created_by) REFERENCES public.users;

-- One org with a few locations and a creator, so every insert passes the
-- app's checks and has a non-empty audience.
INSERT INTO public.orgs (id, name) VALUES ('bench-org', 'Bench org')
    ON CONFLICT (id) DO NOTHING;
INSERT INTO public.locations (id, org_id, name)
    SELECT 'bench-loc-' || i, 'bench-org', 'Bench location ' || i FROM generate_series(1, 3) AS i
    ON CONFLICT (id) DO NOTHING;
INSERT INTO public.users (id, name, user_type, org_id)
    VALUES ('bench-user', 'Bench user', 'ZOWI', 'bench-org')
    ON CONFLICT (id) DO NOTHING;

-- (logrow) the floor of any trigger capture: the app's table with one more
-- trigger that copies each new row, whole, into a table of its own, and
-- nothing else (no audience, no event id, no notification). Created
-- disabled; producer-cost.sh enables it for its runs only.
DROP TABLE IF EXISTS bench.logrow;
CREATE TABLE bench.logrow (id bigserial PRIMARY KEY, row_data jsonb NOT NULL);
CREATE OR REPLACE FUNCTION bench.logrow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.logrow (row_data) VALUES (to_jsonb(NEW));
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS bench_logrow ON public.templates;
CREATE TRIGGER bench_logrow AFTER INSERT ON public.templates
    FOR EACH ROW EXECUTE FUNCTION bench.logrow();
ALTER TABLE public.templates DISABLE TRIGGER bench_logrow;
