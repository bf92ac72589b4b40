-- Leave the database as the benchmark found it (apart from the fixture rows).
ALTER TABLE public.templates ENABLE TRIGGER pgrelay_templates;
DROP TRIGGER IF EXISTS bench_logrow ON public.templates;
UPDATE relay.sequencer SET idle = true, changed_at = now();
TRUNCATE bench.plain, bench.fk, public.templates, relay.events;
DROP SCHEMA bench CASCADE;
DELETE FROM public.users WHERE id = 'bench-user';
DELETE FROM public.locations WHERE org_id = 'bench-org';
DELETE FROM public.orgs WHERE id = 'bench-org';
