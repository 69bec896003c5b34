//! keygate: a secrets-broker proxy with a human approval gate.
//!
//! Workloads point unmodified AWS Secrets Manager and Vault clients at
//! keygate. Each request is authenticated, described as an
//! `AccessRequest`, and decided by the policy: routine reads pass straight
//! through (with caching), exceptional ones are held until an approver acts
//! through the admin API, and everything is audited in a hash chain.
//!
//! Modules in reading order:
//! - [`config`]: TOML → validated `Config` (the only place config is parsed).
//! - [`policy`]: PURE rule evaluation: allow / hold / deny.
//! - [`gate`]: PURE approval state machine for held requests.
//! - [`audit`]: audit events and the hash chain.
//! - [`store`]: durable state (SQLite), behind a trait.
//! - [`holds`]: held requests at runtime: waiters, persistence, expiry.
//! - [`broker`]: the data path every front end shares.
//! - [`front`]: wire protocols (AWS Secrets Manager, Vault).
//! - [`upstream`]: secret stores (AWS SDK, Vault, embedded dev store).
//! - [`tls`]: listener TLS, certificate reload, client-certificate names.
//! - [`server`]: listeners, limits and time budgets; [`hardening`]: process
//!   protections (core dumps).
//! - [`events`]: transitions published once durable; [`notify`]: webhooks.
//! - [`cache`], [`admin`], [`admin_client`], [`review_cli`], [`app`];
//!   [`hexfmt`]: hex, decimal and IPv4 text without `core::fmt` for hot paths.

pub mod admin;
pub mod admin_client;
pub mod app;
pub mod audit;
pub mod broker;
pub mod cache;
pub mod config;
pub mod error_chain;
pub mod events;
pub mod front;
pub mod gate;
pub mod glob;
pub mod hardening;
pub mod hexfmt;
pub mod holds;
pub mod notify;
pub mod policy;
pub mod request_id;
pub mod review_cli;
pub mod secret;
pub mod server;
pub mod store;
pub mod timestamp;
pub mod tls;
pub mod upstream;
