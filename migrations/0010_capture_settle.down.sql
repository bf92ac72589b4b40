ALTER TABLE relay.capture
    DROP COLUMN IF EXISTS settle_xmax,
    DROP COLUMN IF EXISTS reset_pending,
    DROP COLUMN IF EXISTS switch_back_pending;
