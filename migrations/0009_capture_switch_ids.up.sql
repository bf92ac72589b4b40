-- Which switch the decoder has reached, by id, beside the mode it decoded.
-- decoded_mode alone cannot tell "the switch back to trigger is decoded"
-- from "the switch to wal before it is not decoded yet": both read
-- 'trigger'. A capture that took over between a switch to wal and its
-- decoding, after a switch back had followed, would take the slot for
-- drained and drop it with the rows committed in wal mode still in it.
-- The slot is drained when the switch the decoder reached is the last one.
ALTER TABLE relay.capture
    -- The id of the newest relay.capture_switches row (switch_capture
    -- writes it in the switch's transaction).
    ADD COLUMN last_switch    bigint NOT NULL DEFAULT 0,
    -- The id of the newest switch row at or before applied_lsn: written by
    -- the decoder with applied_lsn and decoded_mode.
    ADD COLUMN decoded_switch bigint NOT NULL DEFAULT 0;
UPDATE relay.capture
   SET last_switch = coalesce((SELECT max(s.id) FROM relay.capture_switches s), 0);
-- A decoder whose mode agrees with the mode in force is taken to have
-- reached the last switch, as the rule before this column did.
UPDATE relay.capture
   SET decoded_switch = CASE WHEN slot_name IS NULL OR decoded_mode = mode THEN last_switch ELSE 0 END;
