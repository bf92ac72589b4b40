-- The template-sharing app as a pgrelay topic. Repeatable: re-applied by
-- `migrate up` whenever this file changes.
--
-- Audience keys of a template:
--   location:<id>  for every location it is shared with
--   org:<org_id>   the creator's organisation (ZOWI users receive everything
--                  created in their own org)
-- Keys a user listens to:
--   ZOLO, ZELO  location:<their location>
--   ZEWI        location:<every location of their org>
--   ZOWI        location:<every location of their org> and org:<their org>
-- The creator is the event's actor and never receives it.

-- This runs inside every insert's trigger, so it is written for speed.
-- Every query a PL/pgSQL function runs starts an executor, and one over
-- unnest with DISTINCT (a function scan, a sort) cost as much again as the
-- creator's lookup: a share list of usual length is turned into keys by
-- expressions alone, which PL/pgSQL evaluates without an executor, and the
-- creator's org is the one query. Each key is checked against the keys so
-- far, which is quadratic: from 9 ids on, one query for every key is
-- cheaper, and a long list takes it. Each key is given once; their order
-- means nothing.
CREATE OR REPLACE FUNCTION relay.templates_audience(t public.templates)
RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    keys text[] := '{}';
    loc  text;
    key  text;
    org  text;
BEGIN
    IF cardinality(t.share_location_ids) <= 8 THEN
        FOREACH loc IN ARRAY t.share_location_ids LOOP
            key := 'location:' || loc;
            IF array_position(keys, key) IS NULL THEN
                keys := keys || key;
            END IF;
        END LOOP;
        SELECT u.org_id INTO org FROM public.users u WHERE u.id = t.created_by;
        IF org IS NOT NULL THEN
            keys := keys || ('org:' || org);
        END IF;
    ELSE
        SELECT ARRAY(SELECT DISTINCT 'location:' || l.loc FROM unnest(t.share_location_ids) AS l(loc))
               || coalesce((SELECT ARRAY['org:' || u.org_id] FROM public.users u WHERE u.id = t.created_by), '{}')
          INTO keys;
    END IF;
    RETURN keys;
END
$$;

-- Every (user, key) pair of the rules above: the audience rule as a view, so
-- it can be queried and tested directly.
CREATE OR REPLACE VIEW relay.template_subscriptions AS
    SELECT u.id AS user_id, 'location:' || u.location_id AS key
      FROM public.users u
     WHERE u.user_type IN ('ZOLO', 'ZELO')
    UNION ALL
    SELECT u.id, 'location:' || l.id
      FROM public.users u
      JOIN public.locations l ON l.org_id = u.org_id
     WHERE u.user_type IN ('ZEWI', 'ZOWI')
    UNION ALL
    SELECT u.id, 'org:' || u.org_id
      FROM public.users u
     WHERE u.user_type = 'ZOWI';

CREATE OR REPLACE FUNCTION relay.templates_subscriber_keys(subscriber text)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT key FROM relay.template_subscriptions WHERE user_id = subscriber
$$;

-- Who should receive a template, straight from the rules: used by tests and
-- by anyone auditing deliveries.
CREATE OR REPLACE FUNCTION relay.template_recipients(template_id text)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT s.user_id
      FROM public.templates t
      JOIN relay.template_subscriptions s
        ON s.key = ANY (relay.templates_audience(t))
     WHERE t.id = template_id
       AND s.user_id <> t.created_by
$$;

SELECT relay.set_subscriber_source('public.users', 'id');

SELECT relay.create_topic(
    topic           => 'templates',
    source          => 'public.templates',
    audience        => 'relay.templates_audience(public.templates)',
    subscriber_keys => 'relay.templates_subscriber_keys(text)',
    actor_column    => 'created_by'
);

-- Filter changes: whenever users, locations or orgs change, tell the relays
-- which subscribers' keys may have changed. Statement-level triggers with
-- transition tables send one notification per statement, not per row.
-- They run as their owner, like the capture trigger: whoever may change
-- these tables needs no privilege in schema relay.
CREATE OR REPLACE FUNCTION relay.templates_users_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT id) INTO ids FROM new_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT id) INTO ids
          FROM (SELECT id FROM new_rows UNION SELECT id FROM old_rows) AS changed;
    ELSE
        SELECT array_agg(DISTINCT id) INTO ids FROM old_rows;
    END IF;
    PERFORM relay.filters_changed(coalesce(ids, '{}'));
    RETURN NULL;
END
$$;

-- A location that appears, disappears or moves changes the keys of every
-- org-wide user (ZEWI, ZOWI) of the orgs involved.
CREATE OR REPLACE FUNCTION relay.templates_locations_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    orgs text[];
    ids  text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT org_id) INTO orgs FROM new_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT org_id) INTO orgs
          FROM (SELECT org_id FROM new_rows UNION SELECT org_id FROM old_rows) AS changed;
    ELSE
        SELECT array_agg(DISTINCT org_id) INTO orgs FROM old_rows;
    END IF;
    SELECT array_agg(u.id) INTO ids FROM public.users u WHERE u.org_id = ANY (orgs);
    PERFORM relay.filters_changed(coalesce(ids, '{}'));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION relay.templates_orgs_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(u.id) INTO ids FROM public.users u JOIN old_rows o ON o.id = u.org_id;
    ELSE
        SELECT array_agg(u.id) INTO ids FROM public.users u JOIN new_rows n ON n.id = u.org_id;
    END IF;
    PERFORM relay.filters_changed(coalesce(ids, '{}'));
    RETURN NULL;
END
$$;

-- PostgreSQL allows transition tables on single-event triggers only, hence
-- three triggers per table.
CREATE OR REPLACE TRIGGER pgrelay_filters_ins AFTER INSERT ON public.users
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_users_changed();
CREATE OR REPLACE TRIGGER pgrelay_filters_upd AFTER UPDATE ON public.users
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_users_changed();
CREATE OR REPLACE TRIGGER pgrelay_filters_del AFTER DELETE ON public.users
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_users_changed();

CREATE OR REPLACE TRIGGER pgrelay_filters_ins AFTER INSERT ON public.locations
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_locations_changed();
CREATE OR REPLACE TRIGGER pgrelay_filters_upd AFTER UPDATE ON public.locations
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_locations_changed();
CREATE OR REPLACE TRIGGER pgrelay_filters_del AFTER DELETE ON public.locations
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_locations_changed();

CREATE OR REPLACE TRIGGER pgrelay_filters_upd AFTER UPDATE ON public.orgs
    REFERENCING NEW TABLE AS new_rows OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_orgs_changed();
CREATE OR REPLACE TRIGGER pgrelay_filters_del AFTER DELETE ON public.orgs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION relay.templates_orgs_changed();

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
