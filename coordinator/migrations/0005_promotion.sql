-- Gated promotion: the alias a job asked to move on success, and what the gate decided.
ALTER TABLE jobs ADD COLUMN promote_to TEXT;  -- the alias (JobSpec.promote_to)
ALTER TABLE jobs ADD COLUMN promotion TEXT;   -- JSON PromotionView, once decided
