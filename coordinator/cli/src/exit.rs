//! The `refit` command's exit codes. Scripts and CI act on them, so they never change meaning.

/// Success; for `refit check`: the model may be fine-tuned.
pub const OK: u8 = 0;
/// An error: bad input, a file that cannot be read, an unexpected failure, an API error.
pub const ERROR: u8 = 1;
/// Wrong usage (unknown flag, missing argument), as clap reports it.
pub const USAGE: u8 = 2;
/// `refit check`: not fine-tunable, the job would train from scratch.
pub const SCRATCH: u8 = 10;
/// The decision is reject (not fine-tunable under the policy, or nothing to train on).
pub const REJECTED: u8 = 11;
/// `refit submit --wait`: the job failed or was dead-lettered.
pub const JOB_FAILED: u8 = 12;
/// `refit submit --wait`: the job was cancelled.
pub const JOB_CANCELLED: u8 = 13;
/// The coordinator cannot be reached (refused, DNS, TLS, timeout).
pub const UNREACHABLE: u8 = 14;
/// The coordinator refused the token (or none was given).
pub const TOKEN_REFUSED: u8 = 15;
/// `refit alias`: the version did not pass the alias's promotion gate; the alias did not move.
pub const GATE_FAILED: u8 = 16;

/// The table printed at the end of `refit --help`.
pub const HELP: &str = "\
Exit codes:
  0   success (refit check: fine-tune allowed)
  1   error (bad input, unreadable file, an error answer from the coordinator, ...)
  2   wrong usage
  10  refit check: not fine-tunable, would train from scratch
  11  rejected: not fine-tunable under the policy, or no data
  12  refit submit --wait: the job failed or was dead-lettered
  13  refit submit --wait: the job was cancelled
  14  the coordinator cannot be reached (not running, wrong REFIT_URL, timeout)
  15  the coordinator refused the token (wrong or missing REFIT_TOKEN)
  16  refit alias: the version failed the alias's promotion gate (the alias did not move)";
