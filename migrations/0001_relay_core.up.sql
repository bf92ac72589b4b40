-- pgrelay core: the durable event log, the topic registry and the state the
-- sequencer and retention share. The schema itself and the migration
-- bookkeeping are created by the migration runner.

-- Every topic trigger appends here inside the producer's transaction, so an
-- event exists exactly when its row committed. Events are ordered by
-- (xid, id): the writing transaction's id first, then the insertion order.
-- A reader only reads below the oldest transaction of this database still
-- running (relay.horizon()), so a row that commits later can never appear
-- behind a position a reader has already passed (see docs/design.md).
CREATE TABLE relay.events (
    xid        bigint      NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    id         bigint      GENERATED ALWAYS AS IDENTITY,
    topic      text        NOT NULL,
    payload    jsonb       NOT NULL,
    audience   text[]      NOT NULL DEFAULT '{}',
    actor      text,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (xid, id)
);

COMMENT ON TABLE relay.events IS
    'pgrelay event log: one row per published row, ordered by (xid, id), pruned by retention';

-- Topics: a source table, how to compute the audience keys of one of its
-- rows, and how to compute the keys a subscriber listens to.
CREATE TABLE relay.topics (
    topic           text          PRIMARY KEY
                                  CHECK (topic ~ '^[a-z][a-z0-9_]{0,40}$'),
    source          regclass      NOT NULL,
    audience        regprocedure  NOT NULL,
    subscriber_keys regprocedure  NOT NULL,
    actor_column    name,
    created_at      timestamptz   NOT NULL DEFAULT now()
);

-- Where subscriber ids live: the relay only serves ids found there.
CREATE TABLE relay.subscriber_source (
    singleton  boolean  PRIMARY KEY DEFAULT true CHECK (singleton),
    relation   regclass NOT NULL,
    id_column  name     NOT NULL
);

-- The sequencer (one relay, elected by advisory lock) polls the log while
-- events flow. When it goes idle it sets idle = true; topic triggers then send
-- one wake-up notification, so a busy system pays no NOTIFY per row.
CREATE TABLE relay.sequencer (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    idle       boolean     NOT NULL DEFAULT true,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO relay.sequencer DEFAULT VALUES;

-- Everything at or below this position has been pruned; a resume from before
-- it receives a reset.
CREATE TABLE relay.retention (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    horizon_xid bigint      NOT NULL DEFAULT 0,
    horizon_id  bigint      NOT NULL DEFAULT 0,
    pruned_at   timestamptz
);
INSERT INTO relay.retention DEFAULT VALUES;
