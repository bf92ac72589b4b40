ALTER TABLE relay.capture
    DROP COLUMN IF EXISTS decoded_switch,
    DROP COLUMN IF EXISTS last_switch;
