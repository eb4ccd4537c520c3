//! OCI images: references, the content-addressed store, the registry client, layer
//! extraction and the image config's defaults.
pub mod config;
pub mod extract;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod source;
pub mod store;

pub use pull::{PullError, PullProgress, Puller, ResolvedImage};
pub use reference::ImageRef;
pub use store::Store;
pub mod service;

pub use service::{registries_of, Images};
