//! hako's supervisor: instances, single flight, scaling, lifetimes, cgroups, governor, metrics,
//! admin API and the command line.
pub mod cli;
