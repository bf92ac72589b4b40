-- The template-sharing app: organisations, their locations, users of four
-- kinds, and templates shared with locations.

CREATE TABLE public.orgs (
    id   text PRIMARY KEY,
    name text NOT NULL
);

CREATE TABLE public.locations (
    id     text PRIMARY KEY,
    org_id text NOT NULL REFERENCES public.orgs,
    name   text NOT NULL,
    -- lets users reference (location, org) so a user's location is always in
    -- the user's own organisation
    CONSTRAINT locations_id_org_key UNIQUE (id, org_id)
);
CREATE INDEX locations_org_id_idx ON public.locations (org_id);

CREATE TABLE public.users (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    email       text,
    user_type   text NOT NULL
                CONSTRAINT users_user_type_check
                CHECK (user_type IN ('ZOWI', 'ZOLO', 'ZEWI', 'ZELO')),
    org_id      text NOT NULL REFERENCES public.orgs,
    location_id text REFERENCES public.locations,
    CONSTRAINT users_location_required
        CHECK (user_type NOT IN ('ZOLO', 'ZELO') OR location_id IS NOT NULL),
    CONSTRAINT users_location_in_own_org
        FOREIGN KEY (location_id, org_id) REFERENCES public.locations (id, org_id)
);
CREATE INDEX users_org_id_idx ON public.users (org_id);
CREATE INDEX users_location_id_idx ON public.users (location_id);

CREATE TABLE public.templates (
    id                 text        PRIMARY KEY DEFAULT gen_random_uuid()::text,
    name               text        NOT NULL,
    share_location_ids text[]      NOT NULL DEFAULT '{}',
    created_by         text        NOT NULL REFERENCES public.users,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT templates_share_location_ids_limit
        CHECK (cardinality(share_location_ids) <= 1000)
);
CREATE INDEX templates_created_by_idx ON public.templates (created_by);

-- An array cannot carry a foreign key, so a trigger gives the same promise
-- with an error that names the unknown ids.
CREATE FUNCTION public.templates_check_locations() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown text[];
BEGIN
    IF array_position(NEW.share_location_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'share_location_ids of template % contains NULL', NEW.id
            USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT array_agg(DISTINCT s.id ORDER BY s.id) INTO unknown
      FROM unnest(NEW.share_location_ids) AS s(id)
     WHERE NOT EXISTS (SELECT 1 FROM public.locations l WHERE l.id = s.id);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown location id(s) in share_location_ids: %',
                        array_to_string(unknown, ', ')
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'every id in share_location_ids must exist in public.locations';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER templates_check_locations
    BEFORE INSERT OR UPDATE OF share_location_ids ON public.templates
    FOR EACH ROW EXECUTE FUNCTION public.templates_check_locations();
