//! cliscale's control plane: the REST API, API keys, terminal tokens, the JWKS and the session
//! store. The same code serves local mode (`cliscale up`, SQLite, local executor) and the
//! cluster (PostgreSQL, CommandSession executor).

pub mod bootstrap;
mod catalog;
pub mod console;
pub mod error;
pub mod events;
pub mod executor;
mod feed;
pub mod keys;
pub mod local;
pub mod metrics;
pub mod model;
pub mod openapi;
pub mod output;
pub mod output_files;
pub mod output_routes;
pub mod process;
pub mod retries;
pub mod routes;
mod runs;
pub mod scheduler;
pub mod schedules;
pub mod secrets;
pub mod signing;
pub mod store;
pub mod templates;

pub use error::{ApiError, Result};
