//! `rnerd version` and `rnerd info`.

use super::super::Ctx;
use anyhow::Result;
use rcd_proto::v1 as pb;

pub async fn version(ctx: &Ctx) -> Result<()> {
    println!(
        "Client:\n Version:\t{}\n OS/Arch:\tlinux/{}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let v = ctx
        .client
        .version()
        .version(pb::VersionRequest {})
        .await
        .map_err(ctx.st())?
        .into_inner();
    println!(
        "\nServer:\n rcd:\n  Version:\t{}\n  GitCommit:\t{}",
        v.version, v.revision
    );
    Ok(())
}

pub async fn info(ctx: &Ctx) -> Result<()> {
    let i = ctx
        .client
        .introspection()
        .server(pb::ServerInfoRequest {})
        .await
        .map_err(ctx.st())?
        .into_inner();
    let list = super::list(ctx).await?;
    let tasks = ctx
        .client
        .tasks()
        .list(pb::ListTasksRequest {})
        .await
        .map_err(ctx.st())?
        .into_inner()
        .tasks;
    let count = |s: pb::TaskStatus| tasks.iter().filter(|t| t.status == s as i32).count();
    let images = ctx
        .client
        .images()
        .list(pb::ListImagesRequest {})
        .await
        .map_err(ctx.st())?
        .into_inner()
        .images;
    println!("Server:");
    println!(" Containers: {}", list.len());
    println!("  Running: {}", count(pb::TaskStatus::Running));
    println!("  Paused: {}", count(pb::TaskStatus::Paused));
    println!(
        "  Stopped: {}",
        list.len() - count(pb::TaskStatus::Running) - count(pb::TaskStatus::Paused)
    );
    println!(" Images: {}", images.len());
    println!(" Server Version: {}", i.version);
    println!(" Storage Driver: overlayfs");
    println!(
        " Cgroup Version: {}",
        if i.cgroup_mode.contains('2') && !i.cgroup_mode.contains("hybrid") {
            "2"
        } else {
            "1"
        }
    );
    println!(" Cgroup Mode: {}", i.cgroup_mode);
    println!(" Shim: {}", i.shim);
    println!(
        " Kernel Version: {}",
        nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    println!(" Architecture: {}", std::env::consts::ARCH);
    println!(" Rcd Root Dir: {}", i.root);
    println!(" Rcd State Dir: {}", i.state);
    println!(" Rcd Address: {}", i.address);
    println!(" Namespaces: {}", i.namespaces.join(", "));
    Ok(())
}
