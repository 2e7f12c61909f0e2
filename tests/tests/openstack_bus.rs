//! The OpenStack message bus, end to end: wd's notifications on a real
//! RabbitMQ read by OpenStack's own consumers (Ceilometer's event pipeline,
//! Aodh's owner alarm, from the venv at `target/wd-venv`), both notification
//! forms, and failover between two RabbitMQ nodes. The Python sides are in
//! `tests/fixtures/openstack/`.
//!
//! The broker comes from `WD_TEST_AMQP_URL` (default the local `guest`
//! account). When it or the venv is missing the tests are skipped, unless
//! `WD_REQUIRE_REAL=1`.

// The RabbitMQ test support of wd-notify-amqp, shared rather than copied.
#[path = "../../crates/wd-notify-amqp/tests/support/mod.rs"]
mod support;

#[path = "openstack_bus/ceilometer.rs"]
mod ceilometer;

#[path = "openstack_bus/failover.rs"]
mod failover;

#[path = "openstack_bus/owner_alarm.rs"]
mod owner_alarm;

#[path = "openstack_bus/deployments.rs"]
mod deployments;

#[path = "openstack_bus/tls.rs"]
mod tls;

#[path = "openstack_bus/nova_oracle.rs"]
mod nova_oracle;
