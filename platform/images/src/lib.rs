//! OCI images for Tartarus: pull from a registry (or a local OCI layout directory or a `docker
//! save` tarball) into a content-addressed blob cache, unpack the layers with OCI semantics, and
//! build a bootable ext4 root file system with `tartarus-init` and the image's config injected.
//! Synchronous work (unpack, mkfs) runs on blocking threads; the crate is used by `tartarusd`.

pub mod archive;
pub mod blobs;
pub mod manifest;
pub mod pull;
pub mod rootfs;
pub mod source;
pub mod store;
pub mod unpack;

pub use blobs::Digest;
pub use pull::{pull, Auth, PullError, PullEvent, PullOptions};
pub use store::{ImageRecord, ImageStore};
