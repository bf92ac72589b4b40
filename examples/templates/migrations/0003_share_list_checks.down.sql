-- Back to the 0002 definition: unknown ids first, every one named.
CREATE OR REPLACE FUNCTION public.templates_check_locations() RETURNS trigger
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
