-- Worker presence (refit_proto::WorkerStatus, routing key `worker.<id>.<state>`): workers report
-- themselves while idle too, and say when they stop.
ALTER TABLE workers ADD COLUMN presence INTEGER NOT NULL DEFAULT 0;  -- 1 once it sent presence
ALTER TABLE workers ADD COLUMN stopping INTEGER NOT NULL DEFAULT 0;  -- its last presence said stopping
ALTER TABLE workers ADD COLUMN pool TEXT;                            -- the pool it consumes
