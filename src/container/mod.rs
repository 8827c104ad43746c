//! Containers. For now the pure rules that turn a CRI container request and
//! its image into the process to run (command, environment, user); the OCI
//! spec, the executor and the monitor build on them.

pub mod logs;
pub mod process;
pub mod spec;
