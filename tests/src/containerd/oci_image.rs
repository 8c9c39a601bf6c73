//! Builds real OCI image archives (an OCI image layout in a tar, what `ctr images import`
//! and `docker load` take) from a directory tree, chiefly a busybox image for containerd
//! tests, a pause image for CRI pods and a busybox image with extra files (the hostile-guest
//! test's attack tool): there is no registry, so images are built locally and imported.
//!
//! The archive holds `oci-layout`, `index.json` (one manifest, named by the
//! `io.containerd.image.name` and `org.opencontainers.image.ref.name` annotations), `docker
//! save`'s `manifest.json` (the name as its `RepoTags`) and
//! `blobs/sha256/<digest>` for the config, the manifest and one uncompressed layer (gzip
//! costs seconds in the TCG test host). Every entry has mtime 0 and uid/gid 0, so the same
//! tree always gives the same digests.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Media type of an OCI image index.
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// Media type of an OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed layer tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
/// The `PATH` the image config sets.
pub const IMAGE_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The image name the busybox image gets unless a test picks another.
pub const DEFAULT_BUSYBOX_IMAGE: &str = "docker.io/moat/busybox:latest";

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OciImageError {
    /// The static busybox binary is not there.
    #[error(
        "static busybox not found at {}: install it with `apt-get install busybox-static` \
         (or set MOAT_BUSYBOX)", path.display()
    )]
    BusyboxMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A name does not fit a ustar header (100-byte name, 155-byte prefix).
    #[error("cannot put {path:?} in a tar: {why}")]
    TarName {
        /// The entry's path in the archive.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The rootfs has something other than files, directories and symlinks.
    #[error(
        "cannot put {} in an image layer: only files, directories and symlinks are supported",
        path.display()
    )]
    Unsupported {
        /// The offending file.
        path: PathBuf,
    },
    /// An I/O operation failed.
    #[error("building an OCI image: {what}: {source}")]
    Io {
        /// What was being done (and where).
        what: String,
        /// The error.
        source: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> OciImageError {
    let what = what.into();
    move |source| OciImageError::Io { what, source }
}

/// What [`build_image`] wrote: the image's name and the digests containerd will know it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Full image name, e.g. `docker.io/moat/busybox:latest` (what `ctr` and CRI use).
    pub name: String,
    /// The archive written.
    pub archive: PathBuf,
    /// `sha256:...` of the manifest (the image's digest in containerd).
    pub manifest_digest: String,
    /// `sha256:...` of the config blob (the image id CRI shows).
    pub config_digest: String,
    /// `sha256:...` of the layer blob; also the config's `rootfs.diff_ids[0]`, as the
    /// layer is not compressed.
    pub layer_digest: String,
}

/// The default command and stop signal an image's config gives its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint` (empty: none).
    pub entrypoint: Vec<String>,
    /// `Cmd`: the default arguments (after the entrypoint, if any).
    pub cmd: Vec<String>,
    /// `StopSignal` (`SIGTERM`, ...), if any.
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// A config whose default command is `cmd` (no entrypoint).
    pub fn cmd(cmd: &[&str]) -> Self {
        Self {
            cmd: cmd.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }

    /// A config whose entrypoint is `entrypoint` (no default arguments).
    pub fn entrypoint(entrypoint: &[&str]) -> Self {
        Self {
            entrypoint: entrypoint.iter().map(|a| a.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// The static busybox binary images are built from: `$MOAT_BUSYBOX`, else `/bin/busybox`.
pub fn default_busybox() -> PathBuf {
    std::env::var_os("MOAT_BUSYBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::testhost::initramfs::DEFAULT_BUSYBOX))
}

/// Builds a busybox image archive at `out_tar` named `name` (e.g.
/// [`DEFAULT_BUSYBOX_IMAGE`]) from [`default_busybox`], laid out by
/// [`crate::agent::oci::busybox_rootfs`]; its default command is `sh`.
pub fn build_busybox_image(out_tar: &Path, name: &str) -> Result<ImageRef, OciImageError> {
    build_busybox_image_with(
        out_tar,
        name,
        &default_busybox(),
        &ImageConfig::cmd(&["sh"]),
    )
}

/// The image name [`build_pause_image`] gets unless a test picks another.
pub const DEFAULT_PAUSE_IMAGE: &str = "docker.io/moat/pause:latest";

/// What the pause image runs: wait forever, exit 0 on SIGTERM or SIGINT (as PID 1 of its
/// PID namespace it gets only the signals it handles).
pub const PAUSE_SCRIPT: &str = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done";

/// Builds a pod sandbox ("pause") image for CRI's `sandbox_image` at `out_tar` named
/// `name` (e.g. [`DEFAULT_PAUSE_IMAGE`]): busybox whose entrypoint runs [`PAUSE_SCRIPT`], stop
/// signal SIGTERM.
pub fn build_pause_image(out_tar: &Path, name: &str) -> Result<ImageRef, OciImageError> {
    let config = ImageConfig {
        stop_signal: Some("SIGTERM".into()),
        ..ImageConfig::entrypoint(&["/bin/sh", "-c", PAUSE_SCRIPT])
    };
    build_busybox_image_with(out_tar, name, &default_busybox(), &config)
}

/// The name of the hostile-guest test's image: busybox plus `/bin/moat-share-attack`, built
/// with [`build_busybox_image_with_files`].
pub const DEFAULT_ATTACK_IMAGE: &str = "docker.io/moat/share-attack:latest";

/// Builds an image archive at `out_tar` named `name` from the static busybox binary at
/// `busybox` (laid out by [`crate::agent::oci::busybox_rootfs`]) with `config`.
pub fn build_busybox_image_with(
    out_tar: &Path,
    name: &str,
    busybox: &Path,
    config: &ImageConfig,
) -> Result<ImageRef, OciImageError> {
    busybox_image(out_tar, name, busybox, &[], config)
}

/// [`build_busybox_image`] plus host files: each `(path in the image, host file)` of `files`
/// is copied in with its mode (e.g. `("bin/moat-share-attack", tool)`), replacing what busybox
/// put there; default command `sh`.
pub fn build_busybox_image_with_files(
    out_tar: &Path,
    name: &str,
    files: &[(&str, &Path)],
) -> Result<ImageRef, OciImageError> {
    let sh = ImageConfig::cmd(&["sh"]);
    busybox_image(out_tar, name, &default_busybox(), files, &sh)
}

/// A busybox image with `files` added (see [`build_busybox_image_with_files`]).
fn busybox_image(
    out_tar: &Path,
    name: &str,
    busybox: &Path,
    files: &[(&str, &Path)],
    config: &ImageConfig,
) -> Result<ImageRef, OciImageError> {
    if !busybox.is_file() {
        return Err(OciImageError::BusyboxMissing {
            path: busybox.to_owned(),
        });
    }
    let parent = out_tar
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new()
        .prefix(".moat-rootfs-")
        .tempdir_in(parent)
        .map_err(io_err(format!(
            "creating a scratch dir in {}",
            parent.display()
        )))?;
    let rootfs = scratch.path().join("rootfs");
    crate::agent::oci::busybox_rootfs(&rootfs, busybox).map_err(io_err(format!(
        "laying out a busybox rootfs in {}",
        rootfs.display()
    )))?;
    for (inside, host) in files {
        let dest = rootfs.join(inside.trim_start_matches('/'));
        let what = format!("copying {} to {}", host.display(), dest.display());
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(what.clone()))?;
        }
        // A busybox applet link of the same name is replaced, not written through.
        if std::fs::symlink_metadata(&dest).is_ok() {
            std::fs::remove_file(&dest).map_err(io_err(what.clone()))?;
        }
        std::fs::copy(host, &dest).map_err(io_err(what))?;
    }
    build_image(out_tar, name, &rootfs, config)
}

/// The OCI image configuration of a one-layer linux/amd64 image with `config`, whose layer
/// has digest `layer_digest`.
fn image_config(config: &ImageConfig, layer_digest: &str) -> Value {
    let mut run = json!({ "Env": [IMAGE_PATH_ENV], "Cmd": config.cmd, "WorkingDir": "/" });
    if !config.entrypoint.is_empty() {
        run["Entrypoint"] = json!(config.entrypoint);
    }
    if let Some(sig) = &config.stop_signal {
        run["StopSignal"] = json!(sig);
    }
    json!({
        "created": "1970-01-01T00:00:00Z",
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        "history": [{ "created": "1970-01-01T00:00:00Z", "created_by": "moat-tests oci_image" }],
    })
}

/// Builds an image archive at `out_tar` named `name` whose single layer is the tree under
/// `rootfs` (files, directories, symlinks; owned by root in the image) with `config`;
/// platform linux/amd64, `Env` [`IMAGE_PATH_ENV`], `WorkingDir` `/`.
pub fn build_image(
    out_tar: &Path,
    name: &str,
    rootfs: &Path,
    config: &ImageConfig,
) -> Result<ImageRef, OciImageError> {
    let mut layer = TarWriter::new(Vec::new());
    add_tree(&mut layer, rootfs, "")?;
    let layer_tar = layer.finish().map_err(io_err("finishing the layer tar"))?;
    let layer_digest = sha256_digest(&layer_tar);

    let config = to_json(&image_config(config, &layer_digest))?;
    let layer_desc = descriptor(LAYER_MEDIA_TYPE, &layer_tar);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [layer_desc],
    });
    let manifest = to_json(&manifest)?;
    let mut manifest_desc = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    manifest_desc["platform"] = json!({ "architecture": "amd64", "os": "linux" });
    manifest_desc["annotations"] = json!({
        "io.containerd.image.name": name,
        "org.opencontainers.image.ref.name": ref_name(name),
    });
    let index = json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_desc],
    });
    let index = to_json(&index)?;

    let image = ImageRef {
        name: name.to_owned(),
        archive: out_tar.to_owned(),
        manifest_digest: sha256_digest(&manifest),
        config_digest: sha256_digest(&config),
        layer_digest,
    };
    let what = format!("writing {}", out_tar.display());
    let file = std::fs::File::create(out_tar).map_err(io_err(what.clone()))?;
    let mut tar = TarWriter::new(io::BufWriter::new(file));
    let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &index)?;
    // `docker save`'s own index too, as Docker 25+ writes both: `docker load` reads it.
    tar.file("manifest.json", 0o644, &docker_manifest(&image, blob)?)?;
    tar.dir("blobs/", 0o755)?;
    tar.dir("blobs/sha256/", 0o755)?;
    tar.file(&blob(&image.config_digest), 0o644, &config)?;
    tar.file(&blob(&image.manifest_digest), 0o644, &manifest)?;
    tar.file(&blob(&image.layer_digest), 0o644, &layer_tar)?;
    tar.finish()
        .and_then(|mut w| w.flush())
        .map_err(io_err(what))?;
    Ok(image)
}

/// `docker save`'s `manifest.json` for `image`, whose blobs are at `blob(digest)`.
fn docker_manifest(
    image: &ImageRef,
    blob: impl Fn(&str) -> String,
) -> Result<Vec<u8>, OciImageError> {
    to_json(&json!([{
        "Config": blob(&image.config_digest),
        "RepoTags": [image.name],
        "Layers": [blob(&image.layer_digest)],
    }]))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in Sha256::digest(data) {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The tag of an image name (`latest` if it has none): `a/b:1.0` gives `1.0`.
pub fn ref_name(name: &str) -> &str {
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once('@') {
        Some(_) => "latest",
        None => last.rsplit_once(':').map_or("latest", |(_, tag)| tag),
    }
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(blob), "size": blob.len() })
}

fn to_json(v: &Value) -> Result<Vec<u8>, OciImageError> {
    serde_json::to_vec(v).map_err(|e| OciImageError::Io {
        what: "serialising JSON".into(),
        source: e.into(),
    })
}

/// Adds the entries under `dir` (sorted, recursively) to `tar` as `<prefix><name>`.
fn add_tree<W: Write>(
    tar: &mut TarWriter<W>,
    dir: &Path,
    prefix: &str,
) -> Result<(), OciImageError> {
    let mut entries = std::fs::read_dir(dir)
        .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
        .map_err(io_err(format!("reading {}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let meta =
            std::fs::symlink_metadata(&path).map_err(io_err(format!("stat {}", path.display())))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            tar.dir(&format!("{name}/"), mode)?;
            add_tree(tar, &path, &format!("{name}/"))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(io_err(format!("readlink {}", path.display())))?;
            tar.symlink(&name, target.as_os_str().as_bytes())?;
        } else if ft.is_file() {
            let data =
                std::fs::read(&path).map_err(io_err(format!("reading {}", path.display())))?;
            tar.file(&name, mode, &data)?;
        } else {
            return Err(OciImageError::Unsupported { path });
        }
    }
    Ok(())
}

/// A minimal ustar writer: regular files, directories and symlinks, owned by 0:0, mtime 0.
struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    fn new(out: W) -> Self {
        Self { out }
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<(), OciImageError> {
        self.entry(name, mode, b'0', b"", data)
    }

    fn dir(&mut self, name: &str, mode: u32) -> Result<(), OciImageError> {
        self.entry(name, mode, b'5', b"", b"")
    }

    fn symlink(&mut self, name: &str, target: &[u8]) -> Result<(), OciImageError> {
        self.entry(name, 0o777, b'2', target, b"")
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        kind: u8,
        link: &[u8],
        data: &[u8],
    ) -> Result<(), OciImageError> {
        let bad = |why| OciImageError::TarName {
            path: name.to_owned(),
            why,
        };
        let mut h = [0u8; 512];
        let (prefix, base) = split_name(name).ok_or_else(|| bad("name too long for ustar"))?;
        if link.len() > 100 {
            return Err(bad("symlink target longer than 100 bytes"));
        }
        h[..base.len()].copy_from_slice(base.as_bytes());
        octal(&mut h[100..108], u64::from(mode));
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[148..156].fill(b' ');
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        octal(&mut h[148..155], u64::from(sum));
        let pad = (512 - data.len() % 512) % 512;
        let what = || format!("writing tar entry {name}");
        self.out.write_all(&h).map_err(io_err(what()))?;
        self.out.write_all(data).map_err(io_err(what()))?;
        self.out
            .write_all(&[0u8; 512][..pad])
            .map_err(io_err(what()))
    }

    /// Writes the end-of-archive marker and returns the writer.
    fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 1024])?;
        Ok(self.out)
    }
}

/// Splits `name` into a ustar (prefix, name) pair, or `None` if it cannot fit.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // Split at a '/' so that the prefix fits 155 bytes and the rest 100
    // (a directory's trailing '/' stays with the name part).
    let body = name.strip_suffix('/').unwrap_or(name);
    body.char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && name.len() - i - 1 <= 100)
        .map(|(i, _)| (&name[..i], &name[i + 1..]))
        .next()
}

/// Writes `v` as zero-padded octal filling all but the last byte of `field`, then NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ref_names() {
        assert_eq!(ref_name("docker.io/moat/busybox:latest"), "latest");
        assert_eq!(ref_name("localhost:5000/a/b:v1.2"), "v1.2");
        assert_eq!(ref_name("localhost:5000/a/b"), "latest");
        assert_eq!(ref_name("a/b@sha256:00"), "latest");
    }

    #[test]
    fn digest_of_empty() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn tar_header_checksum_and_long_names() {
        let mut t = TarWriter::new(Vec::new());
        t.file("a", 0o644, b"hello").unwrap();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        t.file(&long, 0o600, b"").unwrap();
        assert!(t.file(&"x".repeat(300), 0o600, b"").is_err());
        let out = t.finish().unwrap();
        assert_eq!(out.len(), 512 * 2 + 512 + 1024);
        let h = &out[..512];
        let mut sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        sum -= h[148..156].iter().map(|&b| u32::from(b)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        let stored = std::str::from_utf8(&h[148..154]).unwrap();
        assert_eq!(u32::from_str_radix(stored, 8).unwrap(), sum);
        assert_eq!(&h[124..136], b"00000000005\0");
        assert_eq!(&out[512..517], b"hello");
        let h2 = &out[1024..1536];
        assert_eq!(&h2[345..465], "d".repeat(120).as_bytes());
        assert_eq!(&h2[..90], "f".repeat(90).as_bytes());
    }

    #[test]
    fn image_layout_is_consistent() {
        let dir = tempfile::Builder::new()
            .prefix("moat-oci-image-test-")
            .tempdir()
            .unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", root.join("bin/hi")).unwrap();
        let out = dir.path().join("img.tar");
        let sh = ImageConfig::cmd(&["sh"]);
        let img = build_image(&out, "docker.io/moat/t:v1", &root, &sh).unwrap();
        let again = build_image(&dir.path().join("again.tar"), &img.name, &root, &sh).unwrap();
        assert_eq!(
            img.manifest_digest, again.manifest_digest,
            "not reproducible"
        );
        let tar = std::fs::read(&out).unwrap();
        assert_eq!(tar.len() % 512, 0);
        let index = find_entry(&tar, "index.json").expect("index.json");
        let index: Value = serde_json::from_slice(index).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], img.manifest_digest.as_str());
        assert_eq!(
            m["annotations"]["io.containerd.image.name"],
            "docker.io/moat/t:v1"
        );
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], "v1");
        let blob = |d: &str| find_entry(&tar, &format!("blobs/sha256/{}", &d[7..])).unwrap();
        let manifest: Value = serde_json::from_slice(blob(&img.manifest_digest)).unwrap();
        assert_eq!(manifest["layers"][0]["digest"], img.layer_digest.as_str());
        let config: Value = serde_json::from_slice(blob(&img.config_digest)).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], img.layer_digest.as_str());
        assert_eq!(config["config"]["Cmd"][0], "sh");
        assert!(config["config"].get("Entrypoint").is_none());
        let layer = blob(&img.layer_digest);
        assert_eq!(sha256_digest(layer), img.layer_digest);
        assert_eq!(
            find_entry(layer, "bin/hello").unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
    }

    #[test]
    fn busybox_image_has_sh() {
        let dir = tempfile::Builder::new()
            .prefix("moat-oci-image-test-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("busybox.tar");
        let t = std::time::Instant::now();
        let img =
            build_busybox_image(&out, DEFAULT_BUSYBOX_IMAGE).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("busybox image built in {:?}", t.elapsed());
        let tar = std::fs::read(&out).unwrap();
        let layer = find_entry(&tar, &format!("blobs/sha256/{}", &img.layer_digest[7..])).unwrap();
        assert!(
            find_entry(layer, "bin/sh").is_some(),
            "no bin/sh in the layer"
        );
        assert!(find_entry(layer, "bin/busybox").unwrap().len() > 100_000);
    }

    #[test]
    fn busybox_image_with_files_has_them() {
        let dir = tempfile::Builder::new()
            .prefix("moat-oci-image-test-")
            .tempdir()
            .unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"\x7fELF not really").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.path().join("attack.tar");
        let files = [("bin/moat-share-attack", tool.as_path())];
        let img = build_busybox_image_with_files(&out, DEFAULT_ATTACK_IMAGE, &files)
            .unwrap_or_else(|e| panic!("{e}"));
        let tar = std::fs::read(&out).unwrap();
        let layer = find_entry(&tar, &format!("blobs/sha256/{}", &img.layer_digest[7..])).unwrap();
        assert_eq!(
            find_entry(layer, "bin/moat-share-attack").unwrap(),
            b"\x7fELF not really"
        );
        assert!(
            find_entry(layer, "bin/sh").is_some(),
            "busybox is there too"
        );
        assert_eq!(entry_mode(layer, "bin/moat-share-attack"), Some(0o755));
    }

    #[test]
    fn pause_image_waits_in_its_entrypoint() {
        let dir = tempfile::Builder::new()
            .prefix("moat-oci-image-test-")
            .tempdir()
            .unwrap();
        let out = dir.path().join("pause.tar");
        let img = build_pause_image(&out, DEFAULT_PAUSE_IMAGE).unwrap_or_else(|e| panic!("{e}"));
        let tar = std::fs::read(&out).unwrap();
        let config = find_entry(&tar, &format!("blobs/sha256/{}", &img.config_digest[7..]));
        let config: Value = serde_json::from_slice(config.unwrap()).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/bin/sh", "-c", PAUSE_SCRIPT])
        );
        assert_eq!(config["config"]["Cmd"], json!([]));
        assert_eq!(config["config"]["StopSignal"], "SIGTERM");
    }

    /// The data of entry `name` in an uncompressed ustar archive (short names only).
    fn find_entry<'a>(tar: &'a [u8], name: &str) -> Option<&'a [u8]> {
        find_header(tar, name).map(|(_, data)| data)
    }

    /// The permission bits of entry `name` (short names only).
    fn entry_mode(tar: &[u8], name: &str) -> Option<u32> {
        let (h, _) = find_header(tar, name)?;
        let mode = std::str::from_utf8(&h[100..107]).ok()?;
        u32::from_str_radix(mode, 8).ok()
    }

    /// The header and data of entry `name` in an uncompressed ustar archive (short names).
    fn find_header<'a>(tar: &'a [u8], name: &str) -> Option<(&'a [u8], &'a [u8])> {
        let mut off = 0;
        while off + 512 <= tar.len() && tar[off] != 0 {
            let h = &tar[off..off + 512];
            let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let size_str = std::str::from_utf8(&h[124..135]).ok()?;
            let size = usize::from_str_radix(size_str, 8).ok()?;
            if &h[..end] == name.as_bytes() {
                return Some((h, &tar[off + 512..off + 512 + size]));
            }
            off += 512 + size.div_ceil(512) * 512;
        }
        None
    }
}
