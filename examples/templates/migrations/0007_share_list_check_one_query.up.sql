-- The share-list check runs in every insert, so its common case, a list
-- that is valid, is answered by one indexed query: no aggregate, no
-- set-returning function, no separate lookup of the creator. Each query a
-- PL/pgSQL function runs starts an executor, and the two of the previous
-- definition (the creator's org, then the unknown ids aggregated from
-- unnest) cost more than the foreign key of created_by. Only a list that fails pays for working out
-- which ids to name, and the error is the same as before: an id of another
-- org and an id that does not exist are reported alike.
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
    IF cardinality(NEW.share_location_ids) = 0 THEN
        RETURN NEW;
    END IF;
    -- Every id is a location of the creator's org: the ids found by one
    -- index scan for all of them (locations_id_org_key covers both
    -- columns), the creator's org looked up once. Array containment, not
    -- unnest: a set-returning function in the query materialises the list
    -- and costs as much again as the lookups. An unknown creator finds no
    -- location and is sorted out below.
    IF NEW.share_location_ids <@ ARRAY(
           SELECT l.id FROM public.locations l
            WHERE l.id = ANY (NEW.share_location_ids)
              AND l.org_id = (SELECT u.org_id FROM public.users u WHERE u.id = NEW.created_by)) THEN
        RETURN NEW;
    END IF;
    SELECT u.org_id INTO creator_org FROM public.users u WHERE u.id = NEW.created_by;
    IF NOT FOUND THEN
        RETURN NEW; -- the foreign key on created_by names the problem
    END IF;
    SELECT array_agg(DISTINCT s.id ORDER BY s.id) INTO unknown
      FROM unnest(NEW.share_location_ids) AS s(id)
     WHERE NOT EXISTS (SELECT 1 FROM public.locations l
                        WHERE l.id = s.id AND l.org_id = creator_org);
    IF unknown IS NULL THEN
        RETURN NEW; -- the missing location was created meanwhile
    END IF;
    RAISE EXCEPTION 'unknown location id(s) in share_location_ids: %',
                    array_to_string(unknown[1:shown], ', ')
                    || CASE WHEN cardinality(unknown) > shown
                            THEN format(' and %s more', cardinality(unknown) - shown) ELSE '' END
        USING ERRCODE = 'foreign_key_violation',
              HINT = 'every id in share_location_ids must be a location of the creator''s organisation';
END
$$;
