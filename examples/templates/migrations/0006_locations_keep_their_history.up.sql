-- Events are addressed to locations by id. A location that moved to another
-- organisation would hand the old org's templates shared with it to the new
-- org's users on every replay that reaches back before the move, so a
-- location with events in the log stays in its org. One without history
-- (nothing shared with it is retained) may still move.
--
-- It runs as its owner, because whoever may update locations (a producer)
-- may not read the log. The check reads the log without an index; location
-- moves are rare.
CREATE FUNCTION public.locations_keep_their_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.org_id IS DISTINCT FROM OLD.org_id
       AND EXISTS (SELECT 1 FROM relay.events e
                    WHERE e.topic = 'templates'
                      AND e.audience @> ARRAY['location:' || OLD.id]) THEN
        RAISE EXCEPTION 'location % cannot move from org % to org %: templates shared with it are still in the event log',
                        OLD.id, OLD.org_id, NEW.org_id
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'locations_history_stays_in_org',
                  HINT = 'create a new location in the other organisation instead';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER locations_keep_their_history
    BEFORE UPDATE OF org_id ON public.locations
    FOR EACH ROW EXECUTE FUNCTION public.locations_keep_their_history();
