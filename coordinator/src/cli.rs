//! The `refit` command line.
