-- Back to the 0005 definition: the creator's org and the unknown ids in two
-- queries on every insert.
CREATE OR REPLACE FUNCTION public.templates_check_locations() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown     text[];
    creator_org text;
    shown       constant int := 10;
BEGIN
    IF cardinality(NEW.share_location_ids) > 1000 THEN
        RAISE EXCEPTION 'share_location_ids of template % has % entries; at most 1000 are allowed',
                        NEW.id, cardinality(NEW.share_location_ids)
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'templates_share_location_ids_limit';
    END IF;
    IF array_position(NEW.share_location_ids, NULL) IS NOT NULL THEN
        RAISE EXCEPTION 'share_location_ids of template % contains NULL', NEW.id
            USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT u.org_id INTO creator_org FROM public.users u WHERE u.id = NEW.created_by;
    IF NOT FOUND THEN
        RETURN NEW; -- the foreign key on created_by names the problem
    END IF;
    SELECT array_agg(DISTINCT s.id ORDER BY s.id) INTO unknown
      FROM unnest(NEW.share_location_ids) AS s(id)
     WHERE NOT EXISTS (SELECT 1 FROM public.locations l
                        WHERE l.id = s.id AND l.org_id = creator_org);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown location id(s) in share_location_ids: %',
                        array_to_string(unknown[1:shown], ', ')
                        || CASE WHEN cardinality(unknown) > shown
                                THEN format(' and %s more', cardinality(unknown) - shown) ELSE '' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'every id in share_location_ids must be a location of the creator''s organisation';
    END IF;
    RETURN NEW;
END
$$;
