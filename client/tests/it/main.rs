//! ferry-client's integration tests: the real `ferryd` binary against a real `ferry serve`
//! (axum on 127.0.0.1:0) over a real repository.

mod app;
mod bootloader;
mod bundle;
mod channels;
mod config;
mod content;
mod devboard;
mod faults;
mod fleet;
mod harness;
mod hostile;
mod keys;
mod local_ui;
mod local_ui_tls;
mod patches;
mod powercut;
mod provision;
mod replicas;
mod rollout;
mod signed_config;
mod tls;
mod trial;
mod update;
mod watchdog;
