-- Remove the app's relay wiring (defined in triggers/20_templates.sql) before
-- its tables; IF EXISTS because the definitions may never have been applied.
DELETE FROM relay.topics WHERE topic = 'templates';
DELETE FROM relay.subscriber_source WHERE relation = 'public.users'::regclass;
DROP FUNCTION IF EXISTS relay.template_recipients(text);
DROP FUNCTION IF EXISTS relay.templates_subscriber_keys(text);
DROP VIEW IF EXISTS relay.template_subscriptions;
DROP FUNCTION IF EXISTS relay.capture_templates() CASCADE;
DROP FUNCTION IF EXISTS relay.templates_audience(public.templates);
DROP FUNCTION IF EXISTS relay.templates_users_changed() CASCADE;
DROP FUNCTION IF EXISTS relay.templates_locations_changed() CASCADE;
DROP FUNCTION IF EXISTS relay.templates_orgs_changed() CASCADE;

DROP TABLE IF EXISTS public.templates;
DROP FUNCTION IF EXISTS public.templates_check_locations();
DROP TABLE IF EXISTS public.users;
DROP TABLE IF EXISTS public.locations;
DROP TABLE IF EXISTS public.orgs;
