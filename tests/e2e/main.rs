//! End-to-end tests: the real `tandem` binary, started as a user would start it.
//!
//! One test binary with modules (each extra integration-test file would link everything again).

mod batch;
mod cli;
mod demo;
mod fluvio;
mod harness;
mod openapi;
mod serve;
mod sql;
mod stream;
