//! Checks the image and registry fixtures against real tools: umoci, skopeo, docker-registry.
//! A missing tool fails the test with the Debian package to install.

use rtest::containerd::Containerd;
use rtest::{
    busybox_image, busybox_index, busybox_layer, busybox_oci_archive, pause_binary, pause_image,
    tar_dir, Compression, Format, ImageBuilder, IndexBuilder, Layer, Platform, Registry,
    TarBuilder,
};
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `/usr/bin/<name>`, or a failure naming the Debian package.
fn tool(name: &str, package: &str) -> String {
    let path = format!("/usr/bin/{name}");
    assert!(
        Path::new(&path).exists(),
        "{path} not found: apt-get install {package}"
    );
    path
}

/// Runs a tool; panics with its output unless it succeeds; returns stdout.
fn run(name: &str, package: &str, args: &[&str]) -> String {
    let out = Command::new(tool(name, package))
        .args(args)
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn skopeo(args: &[&str]) -> Value {
    let out = run("skopeo", "skopeo", args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("skopeo {args:?}: {e}: {out}"))
}

fn umoci(args: &[&str]) -> String {
    run("umoci", "umoci", args)
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("rtest-fx-")
        .tempdir()
        .unwrap()
}

#[test]
fn oci_layout_validates_with_umoci_and_skopeo() {
    let t = tmp();
    let dir = t.path().join("oci");
    let image = busybox_image();
    image.write_oci_layout(&dir, "latest").unwrap();
    pause_image().write_oci_layout(&dir, "pause").unwrap();
    let arg = format!("{}:latest", dir.display());
    let stat = umoci(&["stat", "--json", "--image", &arg]);
    assert!(stat.contains("history"), "{stat}");
    let inspect = skopeo(&["inspect", &format!("oci:{arg}")]);
    assert_eq!(inspect["Digest"], image.digest());
    assert_eq!(inspect["Architecture"], Platform::host().architecture);
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"][0], image.layers[0].digest);
    let config = skopeo(&["inspect", "--config", &format!("oci:{arg}")]);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["rootfs"]["diff_ids"][0], image.layers[0].diff_id);

    let pause = skopeo(&["inspect", &format!("oci:{}:pause", dir.display())]);
    assert_eq!(pause["Digest"], pause_image().digest());
    let config = pause_image().config_json();
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/pause"])
    );
}

#[test]
fn umoci_unpacks_whiteouts_and_every_compression() {
    let t = tmp();
    let upper = TarBuilder::new()
        .whiteout("etc/hostname")
        .dir("var/www/", 0o755)
        .opaque_whiteout("var/www")
        .file("var/www/new.html", b"new\n", 0o644)
        .fifo("run/fifo", 0o600)
        .char_device("dev/null", 1, 3, 0o666)
        .hardlink("bin/busybox-again", "bin/busybox")
        .finish();
    let image = ImageBuilder::new()
        .layer(busybox_layer().clone())
        .compression(Compression::None)
        .layer_tar(upper)
        .compression(Compression::Gzip)
        .layer_tar(TarBuilder::new().file("gz", b"gz\n", 0o600).finish())
        .user("1000:1000")
        .working_dir("/home/app")
        .build()
        .unwrap();
    assert_eq!(image.layers[1].media_type, rtest::image::OCI_LAYER);
    let dir = t.path().join("oci");
    image.write_oci_layout(&dir, "v1").unwrap();
    let bundle = t.path().join("bundle");
    umoci(&[
        "unpack",
        "--image",
        &format!("{}:v1", dir.display()),
        bundle.to_str().unwrap(),
    ]);
    let root = bundle.join("rootfs");
    assert!(root.join("bin/busybox").exists());
    assert!(!root.join("etc/hostname").exists(), "whiteout not applied");
    assert!(root.join("etc/passwd").exists());
    assert!(
        !root.join("var/www/index.html").exists(),
        "opaque whiteout not applied"
    );
    assert_eq!(fs::read(root.join("var/www/new.html")).unwrap(), b"new\n");
    assert_eq!(fs::read(root.join("gz")).unwrap(), b"gz\n");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(fs::metadata(root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let null = fs::metadata(root.join("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(
        fs::metadata(root.join("bin/busybox-again")).unwrap().ino(),
        fs::metadata(root.join("bin/busybox")).unwrap().ino()
    );
    let config: Value =
        serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["user"]["uid"], 1000);
    assert_eq!(config["process"]["cwd"], "/home/app");
}

#[test]
fn zstd_and_docker_media_types_copy_with_skopeo() {
    // through a registry: skopeo ignores Docker manifests in an OCI layout
    let reg = Registry::start().unwrap();
    let t = tmp();
    for (format, compression) in [
        (Format::Oci, Compression::Zstd),
        (Format::Oci, Compression::None),
        (Format::Docker, Compression::Gzip),
        (Format::Docker, Compression::None),
    ] {
        let image = ImageBuilder::new()
            .format(format)
            .compression(compression)
            .layer_tar(TarBuilder::new().file("a", b"a\n", 0o644).finish())
            .cmd(&["/a"])
            .build()
            .unwrap();
        assert_eq!(image.layers[0].tar().unwrap().len() % 512, 0);
        let tag = format!("{format:?}-{compression:?}").to_lowercase();
        reg.push(&image, "media", &tag).unwrap();
        let dst = t.path().join(&tag);
        run(
            "skopeo",
            "skopeo",
            &[
                "copy",
                "--preserve-digests",
                "--src-tls-verify=false",
                &format!("docker://{}", reg.image_ref("media", &tag)),
                &format!("dir:{}", dst.display()),
            ],
        );
        let manifest = fs::read(dst.join("manifest.json")).unwrap();
        assert_eq!(manifest, image.manifest.data, "{tag}");
        let layer = fs::read(dst.join(&image.layers[0].digest["sha256:".len()..])).unwrap();
        assert_eq!(layer, image.layers[0].data, "{tag}");
    }
}

#[test]
fn oci_archive_is_readable_by_skopeo_and_names_the_image_for_ctr() {
    let path = busybox_oci_archive();
    let inspect = skopeo(&["inspect", &format!("oci-archive:{}", path.display())]);
    assert_eq!(inspect["Digest"], busybox_image().digest());
    let inspect = skopeo(&["inspect", &format!("oci-archive:{}:latest", path.display())]);
    assert_eq!(inspect["Digest"], busybox_image().digest());
    let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
    let mut index = None;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new("index.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
            index = Some(serde_json::from_str::<Value>(&s).unwrap());
        }
    }
    let annotations = &index.unwrap()["manifests"][0]["annotations"];
    assert_eq!(annotations["io.containerd.image.name"], rtest::BUSYBOX_NAME);
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "latest");
}

#[test]
fn docker_archive_copies_with_skopeo() {
    let t = tmp();
    let archive = t.path().join("busybox.tar");
    let image = busybox_image();
    image
        .write_docker_archive(&archive, "busybox:latest")
        .unwrap();
    let dst = t.path().join("oci");
    run(
        "skopeo",
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", archive.display()),
            &format!("oci:{}:latest", dst.display()),
        ],
    );
    let config = skopeo(&[
        "inspect",
        "--config",
        &format!("oci:{}:latest", dst.display()),
    ]);
    assert_eq!(config["rootfs"]["diff_ids"][0], image.layers[0].diff_id);
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
}

#[test]
fn index_layout_lists_both_platforms() {
    let t = tmp();
    let index = busybox_index();
    let dir = t.path().join("oci");
    index.write_oci_layout(&dir, "multi").unwrap();
    let arg = format!("oci:{}:multi", dir.display());
    for (arch, platform) in [
        ("arm64", Platform::linux_arm64()),
        ("amd64", Platform::linux_amd64()),
    ] {
        let image = index.image_for(&platform).unwrap();
        // skopeo's "Digest" is that of the index; the platform picks the config
        let inspect = skopeo(&["--override-arch", arch, "inspect", &arg]);
        assert_eq!(inspect["Digest"], index.digest());
        assert_eq!(inspect["Architecture"], arch);
        let config = run(
            "skopeo",
            "skopeo",
            &[
                "--override-arch",
                arch,
                "inspect",
                "--config",
                "--raw",
                &arg,
            ],
        );
        assert_eq!(rtest::sha256_digest(config.as_bytes()), image.config.digest);
    }
    let amd = index.image_for(&Platform::linux_amd64()).unwrap();
    if Platform::host() == Platform::linux_amd64() {
        assert_eq!(amd.digest(), busybox_image().digest());
    }
}

#[test]
fn pushed_image_is_readable_by_skopeo_and_push_is_idempotent() {
    let reg = Registry::start().unwrap();
    let image = busybox_image();
    reg.push(image, "library/busybox", "latest").unwrap();
    let reference = format!("docker://{}", reg.image_ref("library/busybox", "latest"));
    let inspect = skopeo(&["inspect", "--tls-verify=false", &reference]);
    assert_eq!(inspect["Digest"], image.digest());
    let raw = run(
        "skopeo",
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &reference],
    );
    assert_eq!(raw.as_bytes(), &image.manifest.data[..]);

    // again: every blob is found by HEAD, the manifest PUT is accepted and changes nothing
    for blob in image.blobs() {
        assert!(!reg.push_blob("library/busybox", &blob).unwrap());
    }
    reg.push(image, "library/busybox", "latest").unwrap();
    let inspect = skopeo(&["inspect", "--tls-verify=false", &reference]);
    assert_eq!(inspect["Digest"], image.digest());
    let tags = reg.get("/v2/library/busybox/tags/list").unwrap();
    assert_eq!(tags.status, 200);
    let tags: Value = serde_json::from_slice(&tags.body).unwrap();
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
}

#[test]
fn pushed_index_and_docker_images_resolve_per_platform() {
    let reg = Registry::start().unwrap();
    let index = busybox_index();
    reg.push_index(index, "multi", "v1").unwrap();
    let reference = format!("docker://{}", reg.image_ref("multi", "v1"));
    let raw = run(
        "skopeo",
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", &reference],
    );
    assert_eq!(raw.as_bytes(), &index.index.data[..]);
    let arm = skopeo(&[
        "--override-arch",
        "arm64",
        "inspect",
        "--tls-verify=false",
        &reference,
    ]);
    assert_eq!(arm["Digest"], index.digest());
    assert_eq!(arm["Architecture"], "arm64");
    assert_eq!(
        reg.manifest_digest("multi", index.images[1].digest())
            .unwrap()
            .as_deref(),
        Some(index.images[1].digest())
    );

    // Docker schema 2 manifest and manifest list
    let docker = |p: Platform| {
        ImageBuilder::new()
            .format(Format::Docker)
            .platform(p)
            .layer(busybox_layer().clone())
            .cmd(&["sh"])
            .build()
            .unwrap()
    };
    let list = IndexBuilder::new()
        .image(docker(Platform::linux_amd64()))
        .image(docker(Platform::linux_arm64()))
        .build()
        .unwrap();
    assert_eq!(list.index.media_type, rtest::image::DOCKER_MANIFEST_LIST);
    reg.push_index(&list, "docker", "list").unwrap();
    let reference = format!("docker://{}", reg.image_ref("docker", "list"));
    let config = run(
        "skopeo",
        "skopeo",
        &[
            "--override-arch",
            "arm64",
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &reference,
        ],
    );
    assert_eq!(
        rtest::sha256_digest(config.as_bytes()),
        list.images[1].config.digest
    );
    assert_eq!(
        reg.manifest_digest("docker", "list").unwrap().as_deref(),
        Some(list.digest())
    );
    assert_eq!(reg.manifest_digest("docker", "nope").unwrap(), None);
}

#[test]
fn htpasswd_registry_requires_basic_auth() {
    let reg = Registry::builder()
        .htpasswd("alice", "s3cret")
        .start()
        .unwrap();
    let anon = reg.get_with("/v2/", None).unwrap();
    assert_eq!(anon.status, 401);
    assert_eq!(
        anon.header("www-authenticate"),
        Some("Basic realm=\"rtest\"")
    );
    assert_eq!(
        reg.get_with("/v2/", Some(("alice", "wrong")))
            .unwrap()
            .status,
        401
    );
    assert_eq!(reg.get("/v2/").unwrap().status, 200);

    reg.push(pause_image(), "pause", "latest").unwrap();
    let reference = format!("docker://{}", reg.image_ref("pause", "latest"));
    let inspect = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:s3cret",
        &reference,
    ]);
    assert_eq!(inspect["Digest"], pause_image().digest());
    let out = Command::new(tool("skopeo", "skopeo"))
        .args(["inspect", "--tls-verify=false", "--no-creds", &reference])
        .output()
        .unwrap();
    assert!(!out.status.success(), "anonymous inspect worked");
}

#[test]
fn registry_stop_restart_and_drop() {
    let mut reg = Registry::start().unwrap();
    reg.push(pause_image(), "pause", "3.10").unwrap();
    let addr = reg.addr();
    let pid = reg.pid().unwrap();
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        reg.get("/v2/").is_err(),
        "registry still answers after stop"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    reg.restart().unwrap();
    assert_eq!(reg.addr(), addr);
    assert_eq!(
        reg.manifest_digest("pause", "3.10").unwrap().as_deref(),
        Some(pause_image().digest()),
        "image lost across restart"
    );

    let pid = reg.pid().unwrap();
    drop(reg);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "docker-registry {pid} left behind"
    );
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[test]
fn pause_binary_is_static_and_exits_0_on_sigterm_and_sigint() {
    let t = tmp();
    let path = t.path().join("pause");
    fs::write(&path, pause_binary()).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    assert!(
        !has_interpreter(pause_binary()),
        "pause is dynamically linked"
    );
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut child = rtest::spawn_tied(Command::new(&path)).unwrap();
        let pid = child.id() as i32;
        wait_for_handler(pid, signal);
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "pause ignored signal {signal}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "signal {signal}: {status}");
    }
}

/// Whether an ELF64 little-endian binary has a PT_INTERP program header (is dynamic).
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

/// Waits until `pid` catches `signal` (its handler is installed), from /proc/PID/status.
fn wait_for_handler(pid: i32, signal: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let caught = status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        if caught & (1 << (signal - 1)) != 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pause never installed its handler"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn digests_are_deterministic() {
    // the same tree gives the same tar, twice
    let dir = tmp();
    rtest::rootfs::populate_busybox(dir.path()).unwrap();
    let a = tar_dir(dir.path()).unwrap();
    let b = tar_dir(dir.path()).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        Layer::from_tar(&a, Compression::Gzip).unwrap().digest,
        busybox_layer().digest
    );
    assert_eq!(
        rtest::busybox_image_for(Platform::host()).unwrap().digest(),
        busybox_image().digest()
    );
    // and a fixed input has a fixed digest in every run and on every machine
    let image = ImageBuilder::new()
        .platform(Platform::linux_amd64())
        .compression(Compression::None)
        .layer_tar(TarBuilder::new().file("hello", b"hello\n", 0o644).finish())
        .cmd(&["/hello"])
        .build()
        .unwrap();
    assert_eq!(
        image.digest(),
        "sha256:6fae421edd346b23c022a65d12cb5afdc30f5ba01c9fa55c7e991140112adcb5",
        "manifest: {}\nconfig: {}",
        String::from_utf8_lossy(&image.manifest.data),
        String::from_utf8_lossy(&image.config.data)
    );
}

#[test]
fn tar_builder_writes_hostile_entries_verbatim() {
    let long = format!("{}/file", "d".repeat(150));
    let tar = TarBuilder::new()
        .file("../escape", b"x", 0o644)
        .file("/etc/abs", b"y", 0o600)
        .symlink("link", "../../../../etc/shadow")
        .hardlink("hard", "/etc/passwd")
        .char_device("dev/kmsg", 1, 11, 0o600)
        .block_device("dev/sda", 8, 0, 0o600)
        .fifo("fifo", 0o644)
        .whiteout("etc/passwd")
        .whiteout("top")
        .opaque_whiteout("var/")
        .owner(1000, 50)
        .file(&long, b"long", 0o644)
        .finish();
    let mut archive = tar::Archive::new(&tar[..]);
    let got: Vec<(String, tar::EntryType, Option<String>, u64, u64)> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            let kind = h.entry_type();

            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                kind,
                e.link_name_bytes()
                    .map(|l| String::from_utf8(l.into_owned()).unwrap()),
                if kind.is_character_special() || kind.is_block_special() {
                    h.device_major().unwrap().unwrap().into()
                } else {
                    h.uid().unwrap()
                },
                h.size().unwrap(),
            )
        })
        .collect();
    use tar::EntryType as T;
    let want = vec![
        ("../escape".to_owned(), T::Regular, None, 0, 1),
        ("/etc/abs".into(), T::Regular, None, 0, 1),
        (
            "link".into(),
            T::Symlink,
            Some("../../../../etc/shadow".to_owned()),
            0,
            0,
        ),
        ("hard".into(), T::Link, Some("/etc/passwd".into()), 0, 0),
        ("dev/kmsg".into(), T::Char, None, 1, 0),
        ("dev/sda".into(), T::Block, None, 8, 0),
        ("fifo".into(), T::Fifo, None, 0, 0),
        ("etc/.wh.passwd".into(), T::Regular, None, 0, 0),
        (".wh.top".into(), T::Regular, None, 0, 0),
        ("var/.wh..wh..opq".into(), T::Regular, None, 0, 0),
        (long, T::Regular, None, 1000, 4),
    ];
    assert_eq!(got, want);
}

/// `REF -> (DIGEST, PLATFORMS)` of every image in `ctr images ls`.
fn ctr_images(ctd: &Containerd) -> Vec<(String, String, String)> {
    ctd.ctr_ok(&["images", "ls"])
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_owned(), f[2].to_owned(), f[f.len() - 2].to_owned())
        })
        .collect()
}

#[test]
fn archives_import_into_containerd_and_run() {
    let ctd = Containerd::start("", &[]).unwrap();
    let t = tmp();
    ctd.import(busybox_oci_archive(), None).unwrap();
    ctd.import(rtest::pause_oci_archive(), None).unwrap();
    let saved = t.path().join("saved.tar");
    busybox_image()
        .write_docker_archive(&saved, "rtest/saved:v1")
        .unwrap();
    ctd.import(&saved, None).unwrap();
    let multi = t.path().join("multi.tar");
    busybox_index()
        .write_oci_archive(&multi, "docker.io/library/multi:v1")
        .unwrap();
    ctd.ctr_ok(&[
        "images",
        "import",
        "--all-platforms",
        multi.to_str().unwrap(),
    ])
    .unwrap();

    let images = ctr_images(&ctd);
    let find = |name: &str| {
        images
            .iter()
            .find(|i| i.0 == name)
            .unwrap_or_else(|| panic!("{name} not imported: {images:?}"))
            .clone()
    };
    assert_eq!(find(rtest::BUSYBOX_NAME).1, busybox_image().digest());
    assert_eq!(find(rtest::PAUSE_NAME).1, pause_image().digest());
    find("docker.io/rtest/saved:v1");
    let multi = find("docker.io/library/multi:v1");
    assert_eq!(multi.1, busybox_index().digest());
    assert_eq!(multi.2, "linux/amd64,linux/arm64/v8");

    let id = ctd.container_id("fx-busybox");
    let cgroup = ctd.cgroup_for(&id);
    let out = ctd
        .ctr_ok(&[
            "run",
            "--rm",
            "--cgroup",
            &cgroup,
            rtest::BUSYBOX_NAME,
            &id,
            "cat",
            "/etc/hostname",
        ])
        .unwrap();
    assert_eq!(out, "busybox\n");

    // signal only a running task (a signal to a created one fails `ctr run`), and resend:
    // pause as PID 1 ignores SIGTERM until its handler is set
    let id = ctd.container_id("fx-pause");
    let cgroup = ctd.cgroup_for(&id);
    let stderr = t.path().join("ctr-run.stderr");
    let (_, ctr) = Containerd::binaries().unwrap();
    let mut cmd = Command::new(ctr);
    cmd.arg("--address")
        .arg(ctd.address())
        .args(["--namespace", ctd.namespace()])
        .args(["run", "--rm", "--cgroup", &cgroup, rtest::PAUSE_NAME, &id])
        .stderr(fs::File::create(&stderr).unwrap());
    let mut run = rtest::spawn_tied(cmd).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "pause did not stop:\n{}",
            ctd.log_tail(40)
        );
        if ctd.task_status(&id).unwrap().as_deref() == Some("RUNNING") {
            let _ = ctd.ctr(&["task", "kill", "-s", "SIGTERM", &id]);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "pause exit: {status}; ctr run said: {}",
        fs::read_to_string(&stderr).unwrap()
    );
    let left = ctd.stop().unwrap();
    assert!(left.is_empty(), "containerd left: {left:?}");
}
