-- A new topic in SQL only: chat messages posted to channels, delivered to the
-- members of the channel (never to the author). Apply after `migrate up`.

-- 1. The application's own tables.
CREATE TABLE public.channels (
    id     text PRIMARY KEY,
    org_id text NOT NULL REFERENCES public.orgs
);
CREATE TABLE public.channel_members (
    channel_id text NOT NULL REFERENCES public.channels ON DELETE CASCADE,
    user_id    text NOT NULL REFERENCES public.users ON DELETE CASCADE,
    PRIMARY KEY (channel_id, user_id)
);
CREATE INDEX channel_members_user_id_idx ON public.channel_members (user_id);
CREATE TABLE public.messages (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id text        NOT NULL REFERENCES public.channels,
    author_id  text        NOT NULL REFERENCES public.users,
    body       text        NOT NULL,
    posted_at  timestamptz NOT NULL DEFAULT now()
);

-- 2. The audience of one row: the keys it is addressed to. Called once per
-- inserted row inside the producer's transaction, so keep it cheap.
CREATE FUNCTION public.messages_audience(m public.messages)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['channel:' || m.channel_id]
$$;

-- 3. The keys one subscriber listens to. Called by the relay when a
-- subscriber connects and whenever its filters may have changed.
CREATE FUNCTION public.messages_subscriber_keys(subscriber text)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT 'channel:' || channel_id FROM public.channel_members WHERE user_id = subscriber
$$;

-- 4. Register the topic: from now on every insert into public.messages is an
-- event of topic "messages"; author_id names the writer, who never receives it.
SELECT relay.create_topic(
    topic           => 'messages',
    source          => 'public.messages',
    audience        => 'public.messages_audience(public.messages)',
    subscriber_keys => 'public.messages_subscriber_keys(text)',
    actor_column    => 'author_id'
);

-- 5. Keep connected subscribers' filters current: whenever membership
-- changes, tell the relays whose keys changed. One notification per
-- statement, thanks to transition tables. It runs as its owner, so roles
-- that change memberships need no privilege in schema relay.
CREATE FUNCTION public.channel_members_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT user_id) INTO ids FROM new_rows;
    ELSE
        SELECT array_agg(DISTINCT user_id) INTO ids FROM old_rows;
    END IF;
    PERFORM relay.filters_changed(coalesce(ids, '{}'));
    RETURN NULL;
END
$$;
CREATE TRIGGER channel_members_filters_ins AFTER INSERT ON public.channel_members
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.channel_members_changed();
CREATE TRIGGER channel_members_filters_del AFTER DELETE ON public.channel_members
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.channel_members_changed();

-- Subscribers are the ids of public.users, as for templates. An application
-- with its own subscriber table would name it once:
--   SELECT relay.set_subscriber_source('public.accounts', 'id');
