//! RabbitMQ adapter tests.
