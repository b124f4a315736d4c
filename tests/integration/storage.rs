//! Object store tests against the real S3 server.
