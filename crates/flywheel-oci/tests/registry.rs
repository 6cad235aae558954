//! `registry::push` against a real registry: Debian's `docker-registry` (distribution 2.8),
//! checked with skopeo. Each test starts its own registry on a free port of 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use flywheel_oci::digest::Digest;
use flywheel_oci::oci::{annotation, media_type, Descriptor, Index, Manifest, SBOM_ANNOTATION};
use flywheel_oci::read::LayoutImage;
use flywheel_oci::registry::{self, BlobAction, PushOptions, PushReport, RegistryError};
use tempfile::TempDir;

const REGISTRY: &str = "/usr/bin/docker-registry";
const USER: &str = "flywheel";
const PASSWORD: &str = "wheel-s3cret";
/// bcrypt of PASSWORD (made once with libxcrypt; the registry reads only bcrypt htpasswd files).
const HTPASSWD: &str = "flywheel:$2y$05$flywheelTestSaltAbCdEu./AoCd/fixBWJCxd6MY9E4riEVB/gx2";
const MIB: usize = 1 << 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `docker-registry serve` process, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Registry {
    fn start() -> Registry {
        Registry::start_with("")
    }

    /// `auth` is YAML put under `auth:` in the config (empty: none).
    fn start_with(auth: &str) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let auth_yaml = if auth.is_empty() { String::new() } else { format!("auth:\n{auth}") };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
            storage.display()
        );
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut reg = Registry { child, port, dir };
        if !reg.wait_ready() {
            panic!("docker-registry did not start on port {port}; its log:\n{}", reg.log());
        }
        reg
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some((status, _, _)) = http_get(self.port, "/v2/", None) {
                if status == 200 || status == 401 {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: (status, headers lowercased, body).
fn http_get(port: u16, path: &str, headers: Option<&str>) -> Option<(u16, String, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra = headers.unwrap_or("");
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{extra}\r\n").ok()?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, head.to_ascii_lowercase(), resp[split + 4..].to_vec()))
}

/// Bytes that differ with `seed`, of length `len`.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A layout written by hand.
struct TestImage {
    dir: TempDir,
    digest: Digest,
    config: Digest,
    layers: Vec<(Digest, u64)>,
    sbom: Option<Digest>,
}

impl TestImage {
    fn open(&self) -> LayoutImage {
        LayoutImage::open_dir(self.dir.path(), None).unwrap()
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.dir.path().join("blobs/sha256").join(d.hex())
    }
}

fn put_blob(dir: &Path, media: &str, bytes: &[u8]) -> Descriptor {
    let d = Digest::of(bytes);
    std::fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    Descriptor::new(media, d, bytes.len() as u64)
}

/// An image with one layer per entry of `layers`, and an SBOM artifact if `sbom`.
fn build_image(layers: &[Vec<u8>], sbom: bool) -> TestImage {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let layer_descs: Vec<Descriptor> = layers.iter().map(|l| put_blob(dir, media_type::LAYER_GZIP, l)).collect();
    let diff_ids: Vec<String> = layers.iter().map(|l| Digest::of(l).to_string()).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_desc = put_blob(dir, media_type::CONFIG, &serde_json::to_vec(&config).unwrap());
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::MANIFEST.into()),
        artifact_type: None,
        config: config_desc.clone(),
        layers: layer_descs.clone(),
        subject: None,
        annotations: BTreeMap::new(),
    };
    let manifest_desc = put_blob(dir, media_type::MANIFEST, &serde_json::to_vec(&manifest).unwrap());
    let mut entry = manifest_desc.clone();
    entry.annotations.insert(annotation::REF_NAME.into(), "layout-tag".into());
    let mut sbom_digest = None;
    if sbom {
        let empty = put_blob(dir, media_type::EMPTY, b"{}");
        let doc = serde_json::json!({"spdxVersion": "SPDX-2.3", "name": "test", "seed": layer_descs.len()});
        let mut spdx = put_blob(dir, media_type::SPDX, &serde_json::to_vec(&doc).unwrap());
        spdx.annotations.insert(annotation::TITLE.into(), "sbom.spdx.json".into());
        let artifact = Manifest {
            schema_version: 2,
            media_type: Some(media_type::MANIFEST.into()),
            artifact_type: Some(media_type::SPDX.into()),
            config: empty,
            layers: vec![spdx],
            subject: Some(manifest_desc.clone()),
            annotations: BTreeMap::from([(annotation::CREATED.into(), "1970-01-01T00:00:01Z".into())]),
        };
        let artifact_desc = put_blob(dir, media_type::MANIFEST, &serde_json::to_vec(&artifact).unwrap());
        entry.annotations.insert(SBOM_ANNOTATION.into(), artifact_desc.digest.to_string());
        sbom_digest = Some(artifact_desc.digest);
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type::INDEX.into()),
        manifests: vec![entry],
        annotations: BTreeMap::new(),
    };
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    TestImage {
        digest: manifest_desc.digest,
        config: config_desc.digest,
        layers: layer_descs.iter().map(|d| (d.digest, d.size)).collect(),
        sbom: sbom_digest,
        dir: tmp,
    }
}

/// Three layers: 10 KiB, 300 KiB and 2.5 MiB (chunked at 1 MiB).
fn standard_layers(seed: u64) -> Vec<Vec<u8>> {
    vec![noise(seed, 10 << 10), noise(seed + 1, 300 << 10), noise(seed + 2, 5 * MIB / 2)]
}

fn options(work: &Path) -> PushOptions {
    PushOptions {
        insecure: true,
        jobs: 3,
        // No credentials unless a test writes this file.
        docker_config: Some(work.join("docker-config.json")),
        chunk_size: MIB as u64,
        state_dir: None,
        retries: 3,
    }
}

fn actions(r: &PushReport) -> Vec<BlobAction> {
    r.blobs.iter().map(|b| b.action).collect()
}

fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn skopeo_inspect(reference: &str) -> serde_json::Value {
    serde_json::from_slice(&skopeo(&["inspect", "--tls-verify=false", &format!("docker://{reference}")])).unwrap()
}

fn skopeo_raw(reference: &str) -> Vec<u8> {
    skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{reference}")])
}

#[test]
fn push_then_skip_existing_then_upload_only_the_changed_layer() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(1), false);
    let reference = format!("{}/flywheel/runner:v1", reg.host());
    let report = registry::push(&image.open(), &reference, &options(work.path())).unwrap();
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.reference, reference);
    assert_eq!(report.sbom, None);
    assert_eq!(actions(&report), vec![BlobAction::Uploaded; 4], "{report:?}\n{}", reg.log());
    assert_eq!(report.blobs[0].digest, image.config);
    let layer_bytes: u64 = image.layers.iter().map(|l| l.1).sum();
    let config_size = std::fs::metadata(image.blob_path(&image.config)).unwrap().len();
    assert_eq!(report.bytes_uploaded, layer_bytes + config_size);
    // The big layer went in chunks.
    let log = reg.log();
    // The big layer (2.5 MiB) went in three 1 MiB chunks; the others in one PUT each.
    let patches = log.matches("\"PATCH /v2/flywheel/runner/blobs/uploads/").count();
    assert_eq!(patches, 3, "PATCHes in the registry's log:\n{log}");

    // skopeo sees the same image.
    let inspected = skopeo_inspect(&reference);
    assert_eq!(inspected["Digest"], image.digest.to_string());
    let layers: Vec<String> = image.layers.iter().map(|l| l.0.to_string()).collect();
    assert_eq!(inspected["Layers"], serde_json::json!(layers));
    // The manifest's bytes are the layout's, by tag and by digest.
    let layout_manifest = std::fs::read(image.blob_path(&image.digest)).unwrap();
    assert_eq!(skopeo_raw(&reference), layout_manifest);
    assert_eq!(skopeo_raw(&format!("{}/flywheel/runner@{}", reg.host(), image.digest)), layout_manifest);

    // Again: every blob is there already.
    let again = registry::push(&image.open(), &reference, &options(work.path())).unwrap();
    assert_eq!(again.digest, image.digest);
    assert_eq!(actions(&again), vec![BlobAction::Existed; 4]);
    assert_eq!(again.bytes_uploaded, 0);

    // An image differing in its middle layer: only that layer (and the config) go up.
    let mut changed = standard_layers(1);
    changed[1] = noise(99, 300 << 10);
    let image2 = build_image(&changed, false);
    let report2 =
        registry::push(&image2.open(), &format!("{}/flywheel/runner:v2", reg.host()), &options(work.path())).unwrap();
    assert_eq!(report2.digest, image2.digest);
    let uploaded: Vec<Digest> =
        report2.blobs.iter().filter(|b| b.action == BlobAction::Uploaded).map(|b| b.digest).collect();
    assert_eq!(uploaded, vec![image2.config, image2.layers[1].0]);
    assert_eq!(report2.blobs[1].action, BlobAction::Existed);
    assert_eq!(report2.blobs[3].action, BlobAction::Existed);
    let config2 = std::fs::metadata(image2.blob_path(&image2.config)).unwrap().len();
    assert_eq!(report2.bytes_uploaded, config2 + (300 << 10));
    assert_eq!(skopeo_inspect(&format!("{}/flywheel/runner:v2", reg.host()))["Digest"], image2.digest.to_string());
    // v1 is unchanged.
    assert_eq!(skopeo_inspect(&reference)["Digest"], image.digest.to_string());
}

#[test]
fn monolithic_only_and_push_by_digest() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(7), false);
    let mut opts = options(work.path());
    opts.chunk_size = 64 << 20;
    opts.jobs = 1;
    let by_digest = format!("{}/bydigest@{}", reg.host(), image.digest);
    let report = registry::push(&image.open(), &by_digest, &opts).unwrap();
    assert_eq!(actions(&report), vec![BlobAction::Uploaded; 4]);
    assert!(!reg.log().contains("\"PATCH "), "no PATCH expected below the chunk size");
    assert_eq!(skopeo_raw(&by_digest), std::fs::read(image.blob_path(&image.digest)).unwrap());
    // Without a tag, the layout's tag.
    let untagged = format!("{}/bydigest", reg.host());
    let report = registry::push(&image.open(), &untagged, &opts).unwrap();
    assert_eq!(report.reference, format!("{untagged}:layout-tag"));
    assert_eq!(actions(&report), vec![BlobAction::Existed; 4]);
    assert_eq!(skopeo_inspect(&format!("{untagged}:layout-tag"))["Digest"], image.digest.to_string());
    // HTTPS to this plain-HTTP registry fails at once (no retries), saying why.
    let mut tls = opts.clone();
    tls.insecure = false;
    let e = registry::push(&image.open(), &untagged, &tls).unwrap_err();
    assert!(matches!(e, RegistryError::Connection { attempts: 1, .. }), "{e}");
    assert!(e.to_string().contains("GET https://"), "{e}");
    assert!(e.to_string().contains("plain HTTP"), "{e}");
    // A digest that is not the layout's is refused before anything is sent.
    let other = format!("{}/bydigest@{}", reg.host(), Digest::of(b"other"));
    let e = registry::push(&image.open(), &other, &opts).unwrap_err();
    assert!(matches!(e, RegistryError::Reference { .. }), "{e}");
}

#[test]
fn mounts_from_another_repository() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(11), false);
    let mut opts = options(work.path());
    opts.state_dir = Some(work.path().join("state"));
    let first = registry::push(&image.open(), &format!("{}/team/one:latest", reg.host()), &opts).unwrap();
    assert_eq!(actions(&first), vec![BlobAction::Uploaded; 4]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(work.path().join("state/blobs.json")).unwrap()).unwrap();
    assert_eq!(state["registries"][reg.host()][image.config.to_string()], "team/one");

    let second = registry::push(&image.open(), &format!("{}/team/two:latest", reg.host()), &opts).unwrap();
    assert_eq!(actions(&second), vec![BlobAction::Mounted; 4], "{second:?}\n{}", reg.log());
    assert_eq!(second.bytes_uploaded, 0);
    let inspected = skopeo_inspect(&format!("{}/team/two:latest", reg.host()));
    assert_eq!(inspected["Digest"], image.digest.to_string());

    // Without the state, a third repository gets uploads.
    opts.state_dir = None;
    let third = registry::push(&image.open(), &format!("{}/team/three:latest", reg.host()), &opts).unwrap();
    assert_eq!(actions(&third), vec![BlobAction::Uploaded; 4]);
}

#[test]
fn sbom_artifact_and_referrers_tag() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(21), true);
    let artifact = image.sbom.unwrap();
    let reference = format!("{}/with/sbom:1.0", reg.host());
    let report = registry::push(&image.open(), &reference, &options(work.path())).unwrap();
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.sbom, Some(artifact), "{}", reg.log());
    assert_eq!(report.sbom_blobs.len(), 2);
    assert!(report.sbom_blobs.iter().all(|b| b.action == BlobAction::Uploaded));

    // The artifact, by digest, with its exact bytes.
    let raw = skopeo_raw(&format!("{}/with/sbom@{artifact}", reg.host()));
    assert_eq!(raw, std::fs::read(image.blob_path(&artifact)).unwrap());
    // The referrers tag lists it.
    let tag = format!("sha256-{}", image.digest.hex());
    let index: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&format!("{}/with/sbom:{tag}", reg.host()))).unwrap();
    assert_eq!(index["mediaType"], media_type::INDEX);
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["digest"], artifact.to_string());
    assert_eq!(listed[0]["mediaType"], media_type::MANIFEST);
    assert_eq!(listed[0]["artifactType"], media_type::SPDX);
    assert_eq!(listed[0]["size"], raw.len());
    // The SPDX blob itself.
    let spdx = serde_json::from_slice::<Manifest>(&raw).unwrap().layers[0].digest;
    let (status, _, body) = http_get(reg.port, &format!("/v2/with/sbom/blobs/{spdx}"), None).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(image.blob_path(&spdx)).unwrap());

    // Pushing again leaves the index as it was: listed once.
    let again = registry::push(&image.open(), &reference, &options(work.path())).unwrap();
    assert_eq!(again.sbom, Some(artifact));
    assert!(again.sbom_blobs.iter().all(|b| b.action == BlobAction::Existed));
    let index: serde_json::Value =
        serde_json::from_slice(&skopeo_raw(&format!("{}/with/sbom:{tag}", reg.host()))).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn refused_sbom_artifact_is_only_a_warning() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(25), true);
    // Rewrite the artifact so that the registry refuses it (400 MANIFEST_INVALID): a media type
    // it does not know.
    let dir = image.dir.path();
    let old = image.sbom.unwrap();
    let mut artifact: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.blob_path(&old)).unwrap()).unwrap();
    artifact["mediaType"] = serde_json::json!("application/vnd.example.unknown+json");
    let artifact_desc = put_blob(dir, media_type::MANIFEST, &serde_json::to_vec(&artifact).unwrap());
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["annotations"][SBOM_ANNOTATION] = serde_json::json!(artifact_desc.digest.to_string());
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();

    let reference = format!("{}/refused/sbom:1", reg.host());
    let report = registry::push(&image.open(), &reference, &options(work.path())).unwrap();
    assert_eq!(report.digest, image.digest);
    assert_eq!(report.sbom, None);
    assert!(report.sbom_blobs.is_empty());
    assert_eq!(skopeo_inspect(&reference)["Digest"], image.digest.to_string());
    // The registry did refuse it, and no referrers tag was made.
    let log = reg.log();
    assert!(
        log.contains(&format!("\"PUT /v2/refused/sbom/manifests/{} HTTP/1.1\" 400", artifact_desc.digest)),
        "{log}"
    );
    let tag = format!("sha256-{}", image.digest.hex());
    let (status, _, _) = http_get(reg.port, &format!("/v2/refused/sbom/manifests/{tag}"), None).unwrap();
    assert_eq!(status, 404);
}

#[test]
fn corrupt_blob_is_a_clear_error() {
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&[noise(31, 4096)], false);
    let layer = image.layers[0].0;
    std::fs::write(image.blob_path(&layer), noise(32, 4096)).unwrap();
    let e = registry::push(&image.open(), &format!("{}/corrupt:1", reg.host()), &options(work.path())).unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with(&format!("pushing blob {layer}: registry answered 400 Bad Request: DIGEST_INVALID")),
        "{text}"
    );
    assert_eq!(e.status(), Some(400));
    // Nothing was tagged.
    let (status, _, _) = http_get(reg.port, "/v2/corrupt/manifests/1", None).unwrap();
    assert_eq!(status, 404);
}

fn write_docker_config(path: &Path, host: &str, user: &str, password: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {"other.example.org": {"auth": "eDp5"}, host: {"auth": auth}}});
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

#[test]
fn basic_auth_with_htpasswd() {
    let auth_dir = tempfile::tempdir().unwrap();
    let htpasswd = auth_dir.path().join("htpasswd");
    std::fs::write(&htpasswd, format!("{HTPASSWD}\n")).unwrap();
    let reg =
        Registry::start_with(&format!("  htpasswd:\n    realm: flywheel-test\n    path: {}\n", htpasswd.display()));
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(41), true);
    let reference = format!("{}/private/img:1", reg.host());

    // No credentials: a clear 401, nothing pushed.
    let opts = options(work.path());
    let e = registry::push(&image.open(), &reference, &opts).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.status(), Some(401), "{text}");
    assert!(text.contains("registry answered 401 Unauthorized"), "{text}");
    assert!(text.contains(&format!("no credentials for {}", reg.host())), "{text}");

    // Wrong password: 401 too, naming the credentials used.
    write_docker_config(&work.path().join("docker-config.json"), &reg.host(), USER, "wrong");
    let e = registry::push(&image.open(), &reference, &opts).unwrap_err();
    assert_eq!(e.status(), Some(401), "{e}");
    assert!(e.to_string().contains("credentials of \"flywheel\""), "{e}");

    // A malformed config is an error of its own.
    std::fs::write(work.path().join("docker-config.json"), b"{\"auths\": [").unwrap();
    let e = registry::push(&image.open(), &reference, &opts).unwrap_err();
    assert!(matches!(e, RegistryError::DockerConfig { .. }), "{e}");

    // The right credentials, given as username/password fields under an http:// key.
    let config =
        serde_json::json!({"auths": {format!("http://{}/v2/", reg.host()): {"username": USER, "password": PASSWORD}}});
    std::fs::write(work.path().join("docker-config.json"), serde_json::to_vec(&config).unwrap()).unwrap();
    let report = registry::push(&image.open(), &reference, &opts).unwrap();
    assert_eq!(report.digest, image.digest);
    assert_eq!(actions(&report), vec![BlobAction::Uploaded; 4]);
    assert_eq!(report.sbom, image.sbom);
    // ... and as `auth`, through $DOCKER_CONFIG-less explicit path: all there now.
    write_docker_config(&work.path().join("docker-config.json"), &reg.host(), USER, PASSWORD);
    let again = registry::push(&image.open(), &reference, &opts).unwrap();
    assert_eq!(actions(&again), vec![BlobAction::Existed; 4]);
    let creds = format!("{USER}:{PASSWORD}");
    let inspected = skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &format!("docker://{reference}")]);
    let inspected: serde_json::Value = serde_json::from_slice(&inspected).unwrap();
    assert_eq!(inspected["Digest"], image.digest.to_string());
}

#[test]
fn closed_port_fails_after_retries() {
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&[noise(51, 100)], false);
    let port = free_port();
    let mut opts = options(work.path());
    opts.retries = 2;
    let started = Instant::now();
    let e = registry::push(&image.open(), &format!("127.0.0.1:{port}/nothing:here"), &opts).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RegistryError::Connection { attempts: 2, .. }), "{text}");
    assert!(
        text.starts_with(&format!("connecting to registry 127.0.0.1:{port}: GET http://127.0.0.1:{port}/v2/")),
        "{text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert!(text.contains("after 2 attempts"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn server_errors_are_retried_then_reported() {
    // A fake registry that answers 503 (with Retry-After: 0) twice, then as distribution does.
    let fake = FakeServer::start(|n, _req| {
        if n < 2 {
            (
                503,
                vec![("Retry-After".into(), "0".into())],
                br#"{"errors":[{"code":"UNAVAILABLE","message":"try later"}]}"#.to_vec(),
            )
        } else {
            (
                403,
                Vec::new(),
                br#"{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}"#.to_vec(),
            )
        }
    });
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&[noise(61, 100)], false);
    let mut opts = options(work.path());
    opts.retries = 3;
    opts.jobs = 1;
    let e = registry::push(&image.open(), &format!("127.0.0.1:{}/x:y", fake.port), &opts).unwrap_err();
    // The ping got 503, 503, then 403: not an error for the ping; then the HEAD of a blob is refused.
    let text = e.to_string();
    assert!(text.contains("registry answered 403 Forbidden"), "{text}");
    assert_eq!(fake.count(), 4, "{text}");

    // 503 for ever: gives up after the attempts, saying so.
    let fake = FakeServer::start(|_, _| {
        (503, Vec::new(), br#"{"errors":[{"code":"UNAVAILABLE","message":"down"}]}"#.to_vec())
    });
    opts.retries = 2;
    let e = registry::push(&image.open(), &format!("127.0.0.1:{}/x:y", fake.port), &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("connecting to registry 127.0.0.1:{}: registry answered 503 Service Unavailable: UNAVAILABLE: down (gave up after 2 attempts)", fake.port)
    );
    assert_eq!(fake.count(), 2);
}

// ---- bearer tokens: a token server signing JWTs that the real registry checks ----

/// A tiny HTTP server on a thread: `answer(n, request head)` -> (status, headers, body).
struct FakeServer {
    port: u16,
    count: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

type Answer = (u16, Vec<(String, String)>, Vec<u8>);

impl FakeServer {
    fn start(answer: impl Fn(usize, &str) -> Answer + Send + 'static) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (count.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                // Drain a body, if any.
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0usize);
                let mut body = vec![0; len];
                let _ = reader.read_exact(&mut body);
                let n = c.fetch_add(1, Ordering::SeqCst);
                r.lock().unwrap().push(head.clone());
                let (status, headers, body) = answer(n, &head);
                let mut out = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let _ = stream.write_all(out.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        FakeServer { port, count, requests }
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and self-signed certificate made with openssl.
struct TokenKeys {
    dir: TempDir,
    cert_der: Vec<u8>,
}

impl TokenKeys {
    fn generate() -> TokenKeys {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=flywheel-test-token",
        ]);
        run(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
        let cert_der = std::fs::read(dir.path().join("cert.der")).unwrap();
        TokenKeys { dir, cert_der }
    }

    fn cert_pem(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    /// An RS256 JWT granting `access`, signed by `openssl dgst`.
    fn sign(&self, access: &serde_json::Value) -> String {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": "flywheel-test-issuer",
            "sub": USER,
            "aud": "flywheel-test-registry",
            "exp": now + 600,
            "nbf": now - 10,
            "iat": now - 10,
            "jti": format!("{now}-{}", access),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            b64url(&serde_json::to_vec(&header).unwrap()),
            b64url(&serde_json::to_vec(&claims).unwrap())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign", "key.pem"])
            .current_dir(self.dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        format!("{input}.{}", b64url(&out.stdout))
    }
}

/// The `access` claim for `scope=` values: `repository:NAME:a,b`.
fn access_for(scopes: &[String]) -> serde_json::Value {
    let list: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let (rest, actions) = s.rsplit_once(':')?;
            let (kind, name) = rest.split_once(':')?;
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    serde_json::Value::Array(list)
}

#[test]
fn bearer_tokens_from_a_token_server() {
    let keys = Arc::new(TokenKeys::generate());
    let expected_auth = format!(
        "authorization: basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}")).to_ascii_lowercase()
    );
    let signer = keys.clone();
    let token_server = FakeServer::start(move |_, head| {
        if !head.to_ascii_lowercase().contains(&expected_auth) {
            return (
                401,
                Vec::new(),
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"bad user or password"}]}"#.to_vec(),
            );
        }
        let path = head.split(' ').nth(1).unwrap_or("/");
        let url = reqwest::Url::parse(&format!("http://x{path}")).unwrap();
        let service: Vec<String> =
            url.query_pairs().filter(|(k, _)| k == "service").map(|(_, v)| v.to_string()).collect();
        assert_eq!(service, vec!["flywheel-test-registry".to_string()]);
        let scopes: Vec<String> = url.query_pairs().filter(|(k, _)| k == "scope").map(|(_, v)| v.to_string()).collect();
        let token = signer.sign(&access_for(&scopes));
        let body = serde_json::to_vec(&serde_json::json!({"token": token, "expires_in": 300})).unwrap();
        (200, vec![("Content-Type".into(), "application/json".into())], body)
    });
    let reg = Registry::start_with(&format!(
        "  token:\n    realm: http://127.0.0.1:{}/token\n    service: flywheel-test-registry\n    issuer: flywheel-test-issuer\n    rootcertbundle: {}\n",
        token_server.port,
        keys.cert_pem().display()
    ));
    let work = tempfile::tempdir().unwrap();
    let image = build_image(&standard_layers(71), true);
    let mut opts = options(work.path());
    opts.state_dir = Some(work.path().join("state"));

    // Without credentials the token server refuses: a clear error.
    let e = registry::push(&image.open(), &format!("{}/tok/one:1", reg.host()), &opts).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, RegistryError::Token { .. }), "{text}");
    assert!(text.contains("answered 401 Unauthorized: UNAUTHORIZED: bad user or password"), "{text}");
    assert!(text.contains(&format!("no credentials for {}", reg.host())), "{text}");

    write_docker_config(&work.path().join("docker-config.json"), &reg.host(), USER, PASSWORD);
    let before = token_server.count();
    let report = registry::push(&image.open(), &format!("{}/tok/one:1", reg.host()), &opts).unwrap();
    assert_eq!(report.digest, image.digest, "{}", reg.log());
    assert_eq!(actions(&report), vec![BlobAction::Uploaded; 4]);
    assert_eq!(report.sbom, image.sbom);
    // Tokens are cached per scope: one for the repository, not one per request.
    let fetched = token_server.count() - before;
    assert!((1..=2).contains(&fetched), "{fetched} tokens fetched");
    let requests = token_server.requests.lock().unwrap().clone();
    assert!(requests.last().unwrap().contains("scope=repository%3Atok%2Fone%3Apull%2Cpush"), "{requests:?}");

    // A second repository mounts, with a token that may also pull from the first.
    let second = registry::push(&image.open(), &format!("{}/tok/two:1", reg.host()), &opts).unwrap();
    assert_eq!(actions(&second), vec![BlobAction::Mounted; 4], "{}", reg.log());
    let requests = token_server.requests.lock().unwrap().clone();
    assert!(
        requests.iter().any(|r| r.contains("scope=repository%3Atok%2Fone%3Apull&")
            || r.contains("scope=repository%3Atok%2Fone%3Apull ")),
        "{requests:?}"
    );
}
