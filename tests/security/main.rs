//! The sandbox's regression tests (the README's security model): everything in a
//! repository is hostile, and none of it may reach the agent host. One module per boundary, each on the real
//! engine, server or agent; every case here was once reproduced as an attack and stays
//! forever.

#[path = "../support/mod.rs"]
mod support;

mod containers;
mod env;
mod files;
mod git;
mod mounts;
mod network;
mod output;
mod server;
mod settings;
mod workspace;
