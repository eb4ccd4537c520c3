//! hako's supervisor: instances, single flight, scaling, lifetimes, cgroups, governor, metrics,
//! admin API and the command line.
pub mod admin;
pub mod cli;
pub mod container;
pub mod drain;
pub mod egress;
pub mod exclusive;
pub mod governor;
pub mod hooks;
pub mod image;
pub mod instances;
pub mod logs;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod reload;
pub mod sampler;
pub mod serve;
