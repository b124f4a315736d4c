//! The RabbitMQ adapter.
