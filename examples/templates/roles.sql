-- The example app's grants, after docs/roles.sql (same role names). Run as
-- the database owner.

-- The producer reads and writes the app's tables.
GRANT SELECT, INSERT, UPDATE, DELETE
   ON public.orgs, public.locations, public.users, public.templates
   TO app_producer;

-- The relay's role reads users, locations and orgs only for the demo page
-- at / (who am I, which locations). The write API (POST /api/templates,
-- off unless --write-api) also needs INSERT on public.templates.
GRANT SELECT ON public.orgs, public.locations, public.users TO pgrelay_relay;
