-- Outbox isolation: a job the broker refuses (its pool's queue was declared with other
-- arguments, a permission is missing) is retried with backoff, and failed after
-- coordinator.publish_attempts refusals, without holding up the jobs behind it.
ALTER TABLE jobs ADD COLUMN publish_error TEXT;   -- the broker's last refusal
ALTER TABLE jobs ADD COLUMN publish_after TEXT;   -- not before this time (backoff)
ALTER TABLE jobs ADD COLUMN publish_refusals INTEGER NOT NULL DEFAULT 0; -- since the last publish
