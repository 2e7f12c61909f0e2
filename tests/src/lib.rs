//! Support for the end-to-end tests and the demo: a webhook receiver that
//! verifies Standard Webhooks signatures, the `wdguard watch` agent as a real
//! process, and real guests driven through `virsh`.
//!
//! Architecture invariant: this package only drives the product from outside
//! (processes, sockets, `virsh`), the way an operator would. It never reaches
//! into a crate's internals.
#![forbid(unsafe_code)]

pub mod agent;
pub mod bench;
pub mod container;
pub mod hostile;
pub mod openstack;
pub mod ops;
pub mod receiver;
pub mod scratch;
pub mod virsh;
