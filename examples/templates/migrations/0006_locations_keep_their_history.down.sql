DROP TRIGGER IF EXISTS locations_keep_their_history ON public.locations;
DROP FUNCTION IF EXISTS public.locations_keep_their_history();
