-- pgrelay core functions. Repeatable: re-applied by `migrate up` whenever this
-- file changes, so every statement must be safe to run again.

-- Wake-up tickets. Every NOTIFY serialises its transaction's commit with
-- every other notifying commit, so producers must not notify once per row
-- while the sequencer takes a moment to wake up. A capture trigger that
-- finds the sequencer idle draws a ticket and notifies only with one of
-- the first four; the sequencer rewinds the sequence (setval) each time it
-- goes idle. nextval is not transactional and takes no lock that lasts, so
-- drawing costs producers nothing they wait on. A ticket drawn by a
-- transaction that then rolls back or stays open wakes nobody: the
-- sequencer's idle poll (--idle-poll) bounds that delay.
--
-- A sequence, not a column: it holds nothing worth keeping, and it lives
-- here beside the capture functions that use it so that no rollback of a
-- versioned migration can leave them referring to a dropped object. The
-- sequencer's role rewinds it, so every role that may update
-- relay.sequencer may update it (docs/roles.sql grants the same).
CREATE SEQUENCE IF NOT EXISTS relay.wake_tickets AS bigint;
REVOKE ALL ON SEQUENCE relay.wake_tickets FROM PUBLIC;
DO $grant$
DECLARE
    writer text;
BEGIN
    FOR writer IN
        SELECT DISTINCT a.grantee::regrole::text
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.oid = 'relay.sequencer'::regclass
           AND a.privilege_type = 'UPDATE'
           AND a.grantee NOT IN (0, c.relowner)
    LOOP
        EXECUTE format('GRANT UPDATE ON SEQUENCE relay.wake_tickets TO %s', writer);
    END LOOP;
END
$grant$;

-- relay.create_topic turns inserts into a table into events of a topic.
--   topic            name clients subscribe to ([a-z][a-z0-9_]*)
--   source           the table
--   audience         function(source row) RETURNS text[]: the keys an event
--                    is addressed to
--   subscriber_keys  function(subscriber text) RETURNS SETOF text: the keys a
--                    subscriber listens to
--   actor_column     optional column naming the subscriber who wrote the row;
--                    that subscriber never receives the event
-- It generates one trigger function per topic so that the row's audience is
-- computed with a statically planned call (no dynamic SQL on the write path).
CREATE OR REPLACE FUNCTION relay.create_topic(
    topic text,
    source regclass,
    audience regprocedure,
    subscriber_keys regprocedure,
    actor_column name DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    capture_fn  text := 'capture_' || topic;
    actor_expr  text := 'NULL';
    audience_fn text;
BEGIN
    IF topic !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION 'invalid topic name %: use lower-case letters, digits and _ (at most 41), starting with a letter', topic
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF actor_column IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM pg_attribute
                        WHERE attrelid = source AND attname = actor_column
                          AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION 'actor column % does not exist in %', actor_column, source
                USING ERRCODE = 'undefined_column';
        END IF;
        actor_expr := format('NEW.%I::text', actor_column);
    END IF;

    -- Qualified by hand: regproc's text leaves out a schema on the
    -- caller's search_path, and the capture function runs with its own.
    SELECT format('%I.%I', n.nspname, p.proname) INTO audience_fn
      FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
     WHERE p.oid = audience;

    -- The capture function runs as its owner (the one who made the topic),
    -- so producers need no privilege in schema relay and cannot write the
    -- log but through their rows; a fixed search_path keeps the producer's
    -- own objects out of it.
    EXECUTE format($body$
        CREATE OR REPLACE FUNCTION relay.%I() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $capture$
        BEGIN
            INSERT INTO relay.events (topic, payload, audience, actor)
            VALUES (%L, to_jsonb(NEW), coalesce(%s(NEW), '{}'), %s);
            -- Wake the sequencer only when it has gone idle, so a busy
            -- system pays no NOTIFY per row; and only with the first few
            -- tickets drawn since it went idle, so a burst that starts
            -- while it sleeps pays a handful of NOTIFYs, not one per row
            -- until it is back (see relay.wake_tickets below).
            IF (SELECT s.idle FROM relay.sequencer s) THEN
                IF pg_catalog.nextval('relay.wake_tickets') <= 4 THEN
                    PERFORM pg_catalog.pg_notify('pgrelay_wake', '');
                END IF;
            END IF;
            RETURN NULL;
        END
        $capture$
    $body$, capture_fn, topic, audience_fn, actor_expr);
    EXECUTE format('REVOKE EXECUTE ON FUNCTION relay.%I() FROM PUBLIC', capture_fn);

    EXECUTE format('CREATE OR REPLACE TRIGGER %I AFTER INSERT ON %s FOR EACH ROW EXECUTE FUNCTION relay.%I()',
                   'pgrelay_' || topic, source, capture_fn);

    INSERT INTO relay.topics (topic, source, audience, subscriber_keys, actor_column)
    VALUES (topic, source, audience, subscriber_keys, actor_column)
    ON CONFLICT ON CONSTRAINT topics_pkey DO UPDATE
       SET source = EXCLUDED.source,
           audience = EXCLUDED.audience,
           subscriber_keys = EXCLUDED.subscriber_keys,
           actor_column = EXCLUDED.actor_column;
END
$fn$;

-- relay.drop_topic removes a topic's trigger and registration; events already
-- in the log stay until retention prunes them.
CREATE OR REPLACE FUNCTION relay.drop_topic(topic text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    t relay.topics;
BEGIN
    SELECT * INTO t FROM relay.topics WHERE relay.topics.topic = drop_topic.topic;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown topic %', topic USING ERRCODE = 'undefined_object';
    END IF;
    EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'pgrelay_' || topic, t.source);
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I()', 'capture_' || topic);
    DELETE FROM relay.topics WHERE relay.topics.topic = drop_topic.topic;
END
$fn$;

-- relay.set_subscriber_source names the table whose ids are subscribers
-- (the `sub` claim of a token must be one of them).
CREATE OR REPLACE FUNCTION relay.set_subscriber_source(relation regclass, id_column name)
RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = relation AND attname = id_column
                      AND attnum > 0 AND NOT attisdropped) THEN
        RAISE EXCEPTION 'column % does not exist in %', id_column, relation
            USING ERRCODE = 'undefined_column';
    END IF;
    INSERT INTO relay.subscriber_source (relation, id_column)
    VALUES (relation, id_column)
    ON CONFLICT (singleton) DO UPDATE
       SET relation = EXCLUDED.relation, id_column = EXCLUDED.id_column;
END
$fn$;

-- relay.filters returns, for each of the given subscribers that exists, one
-- row with topic and key NULL (it exists) and one row per (topic, key) it
-- listens to. The relay calls it for connected subscribers only.
CREATE OR REPLACE FUNCTION relay.filters(subscribers text[])
RETURNS TABLE (subscriber text, topic text, key text)
-- As the owner: the relay's role reads filters without any privilege on the
-- tables the subscriber_keys functions read.
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    src relay.subscriber_source;
    t   relay.topics;
BEGIN
    SELECT * INTO src FROM relay.subscriber_source;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no subscriber source is configured'
            USING HINT = 'call relay.set_subscriber_source(''public.users'', ''id'')';
    END IF;
    RETURN QUERY EXECUTE format(
        'SELECT s.sub, NULL::text, NULL::text
           FROM unnest($1) AS s(sub)
          WHERE EXISTS (SELECT 1 FROM %s x WHERE x.%I::text = s.sub)',
        src.relation, src.id_column) USING subscribers;
    FOR t IN SELECT * FROM relay.topics ORDER BY relay.topics.topic LOOP
        RETURN QUERY EXECUTE format(
            'SELECT s.sub, %L::text, k::text
               FROM unnest($1) AS s(sub), LATERAL %s(s.sub) AS k',
            t.topic, t.subscriber_keys::regproc) USING subscribers;
    END LOOP;
END
$fn$;

-- relay.filters_changed tells every relay that the filters of these
-- subscribers may have changed (NULL: possibly everyone's). Call it from
-- triggers on whatever tables subscriber_keys functions read.
CREATE OR REPLACE FUNCTION relay.filters_changed(subscribers text[]) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    payload text;
BEGIN
    IF subscribers IS NOT NULL AND cardinality(subscribers) = 0 THEN
        RETURN;
    END IF;
    payload := CASE WHEN subscribers IS NULL THEN '{"all":true}'
                    ELSE json_build_object('subscribers', subscribers)::text END;
    -- NOTIFY payloads are limited to 8000 bytes: too many ids means
    -- "refresh everyone", which is always correct.
    IF octet_length(payload) > 7000 THEN
        payload := '{"all":true}';
    END IF;
    PERFORM pg_notify('pgrelay_filters', payload);
END
$fn$;

-- relay.foreign_xids returns the ids (low 32 bits) of the transactions
-- running now that are known to belong to other databases: sessions of other
-- databases (pg_stat_activity) and their prepared transactions. They cannot
-- write this database's log. Reading pg_stat_activity costs far more than
-- the rest of a log read, so relays call this every few hundred milliseconds
-- and pass the result to relay.horizon(foreign_xids): an xid never changes
-- database, so a stale list is still right, it only misses newer foreign
-- transactions (which then count as this database's until the next call).
CREATE OR REPLACE FUNCTION relay.foreign_xids() RETURNS bigint[]
LANGUAGE plpgsql STABLE AS $fn$
BEGIN
    RETURN (SELECT coalesce(array_agg(xid32), '{}') FROM (
        SELECT backend_xid::text::bigint AS xid32
          FROM pg_stat_activity
         WHERE backend_xid IS NOT NULL
           AND datname IS DISTINCT FROM current_database()
        UNION ALL
        SELECT transaction::text::bigint
          FROM pg_prepared_xacts
         WHERE database <> current_database()
    ) AS elsewhere);
END
$fn$;

-- relay.horizon returns the position below which the log is settled: every
-- transaction with a smaller xid that could have written to this database
-- has ended, so no event can appear there any more. It is the oldest
-- transaction still running in the current snapshot, ignoring the given
-- transactions of other databases (NULL: look them up now), so a long
-- transaction in another database of the same server does not hold delivery
-- back. Transactions whose database cannot be seen (the role lacks
-- pg_read_all_stats, or the session ended meanwhile) count as this
-- database's: the horizon errs towards waiting, never towards skipping.
--
-- STABLE, so it sees the calling statement's snapshot: the horizon and the
-- rows the statement reads must come from the same snapshot.
--
-- PL/pgSQL, not SQL: it runs in every log read, hundreds of times a second,
-- and a SQL function that is not inlined is planned again on every call
-- (about 3 ms here, mostly planning the pg_stat_activity view it might
-- call), where PL/pgSQL keeps its plans for the session (about 65 µs).
CREATE OR REPLACE FUNCTION relay.horizon(foreign_xids bigint[]) RETURNS bigint
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    snap   pg_snapshot := pg_current_snapshot();
    oldest bigint;
BEGIN
    IF foreign_xids IS NULL THEN
        foreign_xids := relay.foreign_xids();
    END IF;
    -- xid is 32 bits in pg_stat_activity and 64 in the snapshot: compare
    -- the low half.
    SELECT min(x::text::bigint) INTO oldest
      FROM pg_snapshot_xip(snap) AS x
     WHERE NOT (x::text::bigint % 4294967296 = ANY (foreign_xids));
    RETURN coalesce(oldest, pg_snapshot_xmax(snap)::text::bigint);
END
$fn$;

CREATE OR REPLACE FUNCTION relay.horizon() RETURNS bigint
LANGUAGE sql STABLE AS $fn$
    SELECT relay.horizon(NULL)
$fn$;

-- Capture functions are generated: make every registered topic's anew, so
-- that what changed above reaches topics created before.
SELECT relay.create_topic(t.topic, t.source, t.audience, t.subscriber_keys, t.actor_column)
  FROM relay.topics t;

-- Nothing here is for PUBLIC (see migrations/0004_trust.up.sql); repeated so
-- that functions this file creates anew start closed whoever runs it.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA relay FROM PUBLIC;
