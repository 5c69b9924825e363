//! OCI image layouts (image-spec `image-layout.md`) written byte for byte, so tests know every
//! digest before a client touches the image, and read back after a client wrote one.
//!
//! An image is one layer holding `/bin/busybox` (a real static executable) and a small marker
//! file, optionally followed by data layers of random bytes, a config whose entrypoint runs it,
//! and a manifest; an index groups images of several architectures.
//!
//! Invariants:
//! - Output is deterministic: the same architecture and marker give the same digests (data
//!   layers, being random, are unique to each call).
//! - Layers are gzip streams made of *stored* deflate blocks: valid gzip that every client
//!   reads, so clients push them as they are (an uncompressed layer would be recompressed on
//!   push, changing digests), without a compression library or its cost in a debug build.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::{random_bytes, sha256_digest};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME: &str = "org.opencontainers.image.ref.name";
const BUSYBOX: &str = "/bin/busybox";

/// What points at a blob or manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
        }
    }

    fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An image manifest written into a layout.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest exactly as stored.
    pub manifest: Vec<u8>,
    pub descriptor: Descriptor,
    pub architecture: String,
    pub layers: Vec<Descriptor>,
}

/// An image index written into a layout.
#[derive(Debug, Clone)]
pub struct Index {
    pub manifest: Vec<u8>,
    pub descriptor: Descriptor,
    pub images: Vec<Image>,
}

/// A layout directory being written.
pub struct Layout {
    dir: PathBuf,
    tags: Vec<(String, Descriptor)>,
}

impl Layout {
    /// Makes `dir` an empty OCI layout.
    pub fn create(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("creating the layout");
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
            .expect("writing oci-layout");
        let layout = Layout {
            dir: dir.to_owned(),
            tags: Vec::new(),
        };
        layout.write_index_json();
        layout
    }

    /// `oci:DIR:TAG`, the image reference skopeo reads.
    pub fn reference(&self, tag: &str) -> String {
        format!("oci:{}:{tag}", self.dir.display())
    }

    fn put_blob(&self, media_type: &str, bytes: &[u8]) -> Descriptor {
        let descriptor = Descriptor::of(media_type, bytes);
        let hex = descriptor.digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).expect("writing a blob");
        descriptor
    }

    /// Writes a busybox image for `architecture`; `marker` makes its layer unique.
    pub fn add_image(&mut self, architecture: &str, marker: &str) -> Image {
        self.add_image_with_data(architecture, marker, &[])
    }

    /// Writes a busybox image for `architecture` with one more layer per entry of
    /// `data_layers`, each a tar holding one file of that many random bytes.
    pub fn add_image_with_data(
        &mut self,
        architecture: &str,
        marker: &str,
        data_layers: &[usize],
    ) -> Image {
        let mut tars = vec![busybox_rootfs(&format!("{marker} {architecture}"))];
        for (n, len) in data_layers.iter().enumerate() {
            let mut tar = TarWriter::default();
            tar.directory("data/");
            tar.file(&format!("data/{n}"), 0o644, &random_bytes(*len));
            tars.push(tar.finish());
        }
        let diff_ids: Vec<String> = tars.iter().map(|tar| sha256_digest(tar)).collect();
        let layers: Vec<Descriptor> = tars
            .iter()
            .map(|tar| self.put_blob(OCI_LAYER_GZIP, &gzip_stored(tar)))
            .collect();
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {
                "Entrypoint": ["/bin/busybox"],
                "Labels": { "org.opencontainers.image.description": marker },
            },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [{ "created_by": "bulwark black-box tests" }],
        });
        let config = self.put_blob(OCI_CONFIG, &to_json(&config));
        let manifest = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(Descriptor::json).collect::<Vec<_>>(),
        }));
        let descriptor = self.put_blob(OCI_MANIFEST, &manifest);
        Image {
            manifest,
            descriptor,
            architecture: architecture.to_owned(),
            layers,
        }
    }

    /// Writes an index of `images` (each for linux on its architecture).
    pub fn add_index(&mut self, images: Vec<Image>) -> Index {
        let manifests: Vec<Value> = images
            .iter()
            .map(|image| {
                let mut entry = image.descriptor.json();
                entry["platform"] = json!({ "architecture": image.architecture, "os": "linux" });
                entry
            })
            .collect();
        let manifest = to_json(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": manifests,
        }));
        let descriptor = self.put_blob(OCI_INDEX, &manifest);
        Index {
            manifest,
            descriptor,
            images,
        }
    }

    /// Names `descriptor` `tag` in the layout's `index.json`.
    pub fn tag(&mut self, tag: &str, descriptor: &Descriptor) {
        self.tags.retain(|(existing, _)| existing != tag);
        self.tags.push((tag.to_owned(), descriptor.clone()));
        self.write_index_json();
    }

    fn write_index_json(&self) {
        let manifests: Vec<Value> = self
            .tags
            .iter()
            .map(|(tag, descriptor)| {
                let mut entry = descriptor.json();
                entry["annotations"] = json!({ REF_NAME: tag });
                entry
            })
            .collect();
        let index = json!({ "schemaVersion": 2, "manifests": manifests });
        std::fs::write(self.dir.join("index.json"), to_json(&index)).expect("writing index.json");
    }
}

/// A new layout at `dir` holding one amd64 image (made unique by `marker`) tagged `tag`.
pub fn single_image(dir: &Path, marker: &str, tag: &str) -> (Layout, Image) {
    let mut layout = Layout::create(dir);
    let image = layout.add_image("amd64", marker);
    layout.tag(tag, &image.descriptor);
    (layout, image)
}

/// The manifest tagged `tag` in the layout at `dir` (written by a client), with its descriptor.
pub fn read_tagged(dir: &Path, tag: &str) -> (Descriptor, Vec<u8>) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("reading index.json"))
            .expect("index.json is JSON");
    let entry = index["manifests"]
        .as_array()
        .expect("index.json lists manifests")
        .iter()
        .find(|entry| entry["annotations"][REF_NAME] == tag)
        .unwrap_or_else(|| panic!("no manifest tagged {tag} in {index}"));
    let descriptor = Descriptor {
        media_type: entry["mediaType"].as_str().unwrap_or_default().to_owned(),
        digest: entry["digest"].as_str().expect("a digest").to_owned(),
        size: entry["size"].as_u64().expect("a size"),
    };
    let manifest = read_blob(dir, &descriptor.digest);
    (descriptor, manifest)
}

/// The blob `digest` in the layout at `dir`; fails the test unless its bytes match the digest.
pub fn read_blob(dir: &Path, digest: &str) -> Vec<u8> {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{digest} is not sha256"));
    let path = dir.join("blobs/sha256").join(hex);
    let bytes =
        std::fs::read(&path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()));
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "{} is corrupt",
        path.display()
    );
    bytes
}

/// The layer digests listed in an image manifest.
pub fn layer_digests(manifest: &[u8]) -> Vec<String> {
    let manifest: Value = serde_json::from_slice(manifest).expect("a JSON manifest");
    manifest["layers"]
        .as_array()
        .expect("a manifest with layers")
        .iter()
        .map(|layer| layer["digest"].as_str().expect("a digest").to_owned())
        .collect()
}

/// An uncompressed root filesystem (a tar) holding `/bin/busybox` and `/etc/bulwark-test`,
/// whose text is `marker`: the one layer of every test image, and what `docker import` takes.
pub fn busybox_rootfs(marker: &str) -> Vec<u8> {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|err| {
        panic!("reading {BUSYBOX} ({err}): install busybox-static (tools/check installs it)")
    });
    let mut tar = TarWriter::default();
    tar.directory("bin/");
    tar.file("bin/busybox", 0o755, &busybox);
    tar.directory("etc/");
    tar.file("etc/bulwark-test", 0o644, format!("{marker}\n").as_bytes());
    tar.finish()
}

fn to_json(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON serializes")
}

/// A ustar archive of root-owned entries with a fixed modification time.
#[derive(Default)]
struct TarWriter {
    bytes: Vec<u8>,
}

impl TarWriter {
    const MTIME: u64 = 1_700_000_000;

    fn directory(&mut self, path: &str) {
        self.header(path, 0o755, 0, b'5');
    }

    fn file(&mut self, path: &str, mode: u32, contents: &[u8]) {
        self.header(path, mode, contents.len() as u64, b'0');
        self.bytes.extend_from_slice(contents);
        self.pad();
    }

    fn header(&mut self, path: &str, mode: u32, size: u64, kind: u8) {
        assert!(path.len() < 100, "{path} needs a longer tar name field");
        let mut header = [0u8; 512];
        let mut put = |offset: usize, value: &[u8]| {
            header[offset..offset + value.len()].copy_from_slice(value);
        };
        put(0, path.as_bytes());
        put(100, format!("{mode:07o}\0").as_bytes());
        put(108, b"0000000\0"); // uid
        put(116, b"0000000\0"); // gid
        put(124, format!("{size:011o}\0").as_bytes());
        put(136, format!("{:011o}\0", Self::MTIME).as_bytes());
        put(148, b"        "); // the checksum counts its own field as spaces
        put(156, &[kind]);
        put(257, b"ustar\0");
        put(263, b"00");
        put(265, b"root");
        put(297, b"root");
        let checksum: u32 = header.iter().map(|byte| u32::from(*byte)).sum();
        header[148..156].copy_from_slice(format!("{checksum:06o}\0 ").as_bytes());
        self.bytes.extend_from_slice(&header);
    }

    fn pad(&mut self) {
        let rest = self.bytes.len() % 512;
        if rest != 0 {
            self.bytes.resize(self.bytes.len() + 512 - rest, 0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 1024, 0);
        self.bytes
    }
}

/// `data` as a gzip member (RFC 1952) whose deflate stream holds only stored blocks (RFC 1951
/// §3.2.4).
fn gzip_stored(data: &[u8]) -> Vec<u8> {
    const MAX_STORED: usize = 65_535;
    let mut out = Vec::with_capacity(data.len() + data.len() / MAX_STORED * 5 + 32);
    // Magic, deflate, no flags, no mtime, no extra flags, OS unknown.
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    let mut chunks = data.chunks(MAX_STORED).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = u16::try_from(chunk.len()).expect("a stored block holds at most 65535 bytes");
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

/// CRC-32 (IEEE 802.3, reflected), as gzip's trailer wants it.
fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (n, entry) in (0u32..).zip(table.iter_mut()) {
        let mut c = n;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *entry = c;
    }
    let mut crc = !0u32;
    for byte in data {
        crc = table[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::clients::run;

    #[test]
    fn stored_gzip_layers_are_read_by_gzip_itself() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data: Vec<u8> = (0..200_000u32).map(|n| (n * 7 % 251) as u8).collect();
        let path = dir.path().join("layer.gz");
        std::fs::write(&path, gzip_stored(&data)).expect("write");
        let unpacked = run(std::process::Command::new("gzip").arg("-dc").arg(&path));
        assert!(unpacked.stdout == data, "gzip -dc returned other bytes");

        let tar_path = dir.path().join("layer.tar");
        let mut tar = TarWriter::default();
        tar.directory("bin/");
        tar.file("bin/tool", 0o755, b"#!/bin/sh\n");
        std::fs::write(&tar_path, tar.finish()).expect("write");
        let listing = run(std::process::Command::new("tar").arg("-tvf").arg(&tar_path));
        let listing = String::from_utf8_lossy(&listing.stdout).into_owned();
        assert!(
            listing.contains("drwxr-xr-x root/root") && listing.contains("-rwxr-xr-x root/root"),
            "tar read: {listing}"
        );
        assert!(listing.contains("bin/tool"), "tar read: {listing}");
    }
}
