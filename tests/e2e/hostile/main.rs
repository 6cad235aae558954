//! The cache as an attacker approaches it (issue 20, docs/security.md): one module per class of
//! finding, each with malicious clients of its own (raw HTTP, so that a request can be as
//! malformed, slow or unfinished as an attacker makes it) and, for the pull client, a malicious
//! cache. What the index decides runs on both backends (SQLite and PostgreSQL).

#[path = "../support/mod.rs"]
mod support;

mod connections;
mod decoding;
mod harness;
mod inert;
mod planting;
mod private_reads;
mod pull_client;
mod release_data;
mod smaller;
mod status;
