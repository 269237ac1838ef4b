//! PixelGrid's control plane: where sessions go and who holds which slot.
//!
//! - [`placement`]: the placement policy, clock-free and I/O-free.
//! - [`store`]: etcd or an embedded store behind one [`store::Store`] trait.
//! - [`slots`]: atomic slot reservation on a node — no two sessions ever hold the same slot.

mod error;
pub mod placement;
pub mod slots;
pub mod store;

pub use error::{Error, Result};
