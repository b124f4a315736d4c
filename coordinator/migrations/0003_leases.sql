-- Leases (DESIGN §6 "Ownership"): the attempt that holds a job, its fencing token, when the lease
-- lapses (by the coordinator's clock) and where to tell its worker; what the job's attempts cost;
-- the resume point and the version commit; the job's reservation in the object store.
ALTER TABLE jobs ADD COLUMN lease_attempt TEXT;                   -- the attempt id holding the lease
ALTER TABLE jobs ADD COLUMN lease_worker TEXT;
ALTER TABLE jobs ADD COLUMN lease_inbox TEXT;                     -- the worker's inbox (reply_to)
ALTER TABLE jobs ADD COLUMN lease_expires_at TEXT;
ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;     -- the last fencing token granted
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;  -- leases lapsed, transient failures
ALTER TABLE jobs ADD COLUMN handbacks INTEGER NOT NULL DEFAULT 0; -- released by a stopping worker
ALTER TABLE jobs ADD COLUMN resume TEXT;                          -- ResumePoint JSON
ALTER TABLE jobs ADD COLUMN commit_attempt TEXT;                  -- the attempt whose upload is committed
ALTER TABLE jobs ADD COLUMN commit_draft TEXT;                    -- its draft manifest's sha256
ALTER TABLE jobs ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;  -- models/<m>/v<N>/job.json written
ALTER TABLE jobs ADD COLUMN closed INTEGER NOT NULL DEFAULT 0;    -- ended, reservation closed, files cleaned
ALTER TABLE jobs ADD COLUMN dead_letter INTEGER NOT NULL DEFAULT 0; -- dead by the lease rules: to dead-letter
ALTER TABLE events ADD COLUMN attempt_id TEXT;                 -- the attempt that sent it
CREATE INDEX jobs_by_lease ON jobs (lease_expires_at) WHERE lease_attempt IS NOT NULL;
