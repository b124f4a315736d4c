//! `refit`: the command line. See `refit --help`.

use std::process::ExitCode;

use clap::Parser;
use refit_cli::{Cli, run};

fn main() -> ExitCode {
    run(Cli::parse())
}
