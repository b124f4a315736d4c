//! The `refit` command's exit codes. Scripts and CI act on them, so they never change meaning.

/// Success; for `refit check`: the model may be fine-tuned.
pub const OK: u8 = 0;
/// An error: bad input, a file that cannot be read, an unexpected failure.
pub const ERROR: u8 = 1;
/// Wrong usage (unknown flag, missing argument), as clap reports it.
pub const USAGE: u8 = 2;
/// `refit check`: not fine-tunable, the job would train from scratch.
pub const SCRATCH: u8 = 10;
/// The decision is reject (not fine-tunable under the policy, or nothing to train on).
pub const REJECTED: u8 = 11;

/// The table printed at the end of `refit --help`.
pub const HELP: &str = "\
Exit codes:
  0   success (refit check: fine-tune allowed)
  1   error (bad input, unreadable file, ...)
  2   wrong usage
  10  refit check: not fine-tunable, would train from scratch
  11  rejected: not fine-tunable under the policy, or no data";
