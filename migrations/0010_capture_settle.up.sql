-- While capture mode wal is in force (and no switch back is pending), only
-- roles that may write the log can hold delivery back: the horizon ignores
-- other logins' transactions (relay.horizon, triggers/10_relay.sql). What
-- that costs is paid when wal ends, so that no transaction older than what
-- was delivered then can still write the log:
--   * a switch back to triggers is in two steps: set_capture('trigger')
--     marks it pending (readers return to the full horizon, the triggers
--     stay disabled and the sequencer keeps appending), and the sequencer
--     enables the triggers once every transaction that was running when
--     that commit became visible to it has ended;
--   * a lost slot falls back to the triggers at once, as before, and its
--     reset marker waits in the same way, so it follows every row those
--     older transactions write through the re-enabled triggers.
-- docs/design.md ("Readers in wal mode") has the argument.
ALTER TABLE relay.capture
    -- set_capture('trigger') was called while wal was in force; the switch
    -- itself waits for the transactions running then.
    ADD COLUMN switch_back_pending boolean NOT NULL DEFAULT false,
    -- The payload of a reset marker to write once those transactions have
    -- ended (a slot lost while wal was in force).
    ADD COLUMN reset_pending       jsonb,
    -- The first xid not yet assigned when the sequencer first saw the
    -- pending step (NULL until then): every transaction running when the
    -- step committed has a smaller one.
    ADD COLUMN settle_xmax         bigint;
