//! The Tartarus API: Firecracker-shaped HTTP/1.1 on a Unix socket.
//!
//! - [`models`]: the JSON bodies (shared with the `--config-file` format) and the typed
//!   [`models::VmmAction`] / [`models::VmmResponse`] pair exchanged with the VMM thread.
//! - [`router`]: turns a method, path and body into a `VmmAction` or a 400 fault.
//! - [`server`]: the socket loop. It hands each parsed request to the VMM thread over a channel,
//!   wakes that thread through an `EventFd`, waits for the reply and writes the HTTP response.

pub mod models;
pub mod net_models;
pub mod router;
pub mod server;
pub mod snapshot_models;

pub use models::{VmmAction, VmmResponse};
pub use server::{ApiServer, ServerError, SocketFile};
