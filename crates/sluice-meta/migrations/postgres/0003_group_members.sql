-- A classic group's membership as of its last stable generation (JSON), so that a
-- coordinator that restarts or takes the group over resumes it without a rebalance.
ALTER TABLE groups ADD COLUMN members TEXT;
