//! OCI images for Tartarus: pull from a registry (or a local OCI layout directory or a `docker
//! save` tarball) into a content-addressed blob cache, unpack the layers with OCI semantics, and
//! build a bootable ext4 root file system with `tartarus-init` and the image's config injected.
//! Synchronous work (unpack, mkfs) runs on blocking threads; the crate is used by `tartarusd`.

pub mod unpack;
