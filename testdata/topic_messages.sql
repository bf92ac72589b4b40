-- A topic of your own, with the relay core alone (`migrate up --no-example`):
-- chat messages posted to channels, delivered to the members of the channel
-- (never to the author). Run as the database owner after migrating.

-- 1. The application's own tables. Its accounts are the subscribers.
CREATE TABLE public.accounts (
    id   text PRIMARY KEY,
    name text NOT NULL
);
CREATE TABLE public.channels (
    id text PRIMARY KEY
);
CREATE TABLE public.channel_members (
    channel_id text NOT NULL REFERENCES public.channels ON DELETE CASCADE,
    account_id text NOT NULL REFERENCES public.accounts ON DELETE CASCADE,
    PRIMARY KEY (channel_id, account_id)
);
CREATE INDEX channel_members_account_id_idx ON public.channel_members (account_id);
CREATE TABLE public.messages (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id text        NOT NULL REFERENCES public.channels,
    author_id  text        NOT NULL REFERENCES public.accounts,
    body       text        NOT NULL,
    posted_at  timestamptz NOT NULL DEFAULT now()
);

-- 2. Who may subscribe: a token's `sub` must be an id of this table.
SELECT relay.set_subscriber_source('public.accounts', 'id');

-- 3. The audience of one row: the keys it is addressed to. Called once per
-- inserted row inside the producer's transaction, so keep it cheap.
CREATE FUNCTION public.messages_audience(m public.messages)
RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT ARRAY['channel:' || m.channel_id]
$$;

-- 4. The keys one subscriber listens to. Called by the relay when a
-- subscriber connects and whenever its filters may have changed.
CREATE FUNCTION public.messages_subscriber_keys(subscriber text)
RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT 'channel:' || channel_id FROM public.channel_members WHERE account_id = subscriber
$$;

-- 5. Register the topic: from now on every insert into public.messages is an
-- event of topic "messages"; author_id names the writer, who never receives it.
SELECT relay.create_topic(
    topic           => 'messages',
    source          => 'public.messages',
    audience        => 'public.messages_audience(public.messages)',
    subscriber_keys => 'public.messages_subscriber_keys(text)',
    actor_column    => 'author_id'
);

-- 6. Keep connected subscribers' filters current: whenever membership
-- changes, or an account goes, tell the relays whose keys changed. One
-- notification per statement, thanks to transition tables. They run as their
-- owner, so roles that change these tables need no privilege in schema relay.
CREATE FUNCTION public.channel_members_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ids text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(DISTINCT account_id) INTO ids FROM new_rows;
    ELSE
        SELECT array_agg(DISTINCT account_id) INTO ids FROM old_rows;
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

CREATE FUNCTION public.accounts_deleted() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM relay.filters_changed(coalesce((SELECT array_agg(id) FROM old_rows), '{}'));
    RETURN NULL;
END
$$;
CREATE TRIGGER accounts_filters_del AFTER DELETE ON public.accounts
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.accounts_deleted();
