//! Integration and end-to-end tests against the real RabbitMQ and the real S3 server.
//!
//! The services are found through `REFIT_TEST_AMQP_URL` and `REFIT_TEST_S3_*` (see `common`), with
//! loopback defaults that match `deploy/`'s scripts. A missing service fails the test with a
//! message saying how to start it; nothing is skipped.

mod broker;
mod common;
mod coordinator;
mod deploy;
mod ownership;
mod queue;
mod serve;
mod storage;
mod worker;
