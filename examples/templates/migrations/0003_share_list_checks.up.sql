-- Share lists are checked cheapest-first: the BEFORE trigger runs before the
-- table's CHECK constraints, so a huge list of unknown ids used to be looked
-- up in full and rejected with an error naming every id (megabytes for a
-- large array) instead of the size limit. Now the size is checked first, and
-- an error names at most 10 unknown ids and how many more there are.
CREATE OR REPLACE FUNCTION public.templates_check_locations() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown text[];
    shown   constant int := 10;
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
    SELECT array_agg(DISTINCT s.id ORDER BY s.id) INTO unknown
      FROM unnest(NEW.share_location_ids) AS s(id)
     WHERE NOT EXISTS (SELECT 1 FROM public.locations l WHERE l.id = s.id);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown location id(s) in share_location_ids: %',
                        array_to_string(unknown[1:shown], ', ')
                        || CASE WHEN cardinality(unknown) > shown
                                THEN format(' and %s more', cardinality(unknown) - shown) ELSE '' END
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'every id in share_location_ids must exist in public.locations';
    END IF;
    RETURN NEW;
END
$$;
