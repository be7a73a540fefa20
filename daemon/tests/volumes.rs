//! Volumes through rcd's gRPC API with real busybox containers: named volumes outlive their
//! containers, anonymous ones go with `remove_volumes`, read-only binds, missing host
//! directories made, in-use refusal, prune. Build first: `cargo build -p rcd -p rcd-cli`.

mod common;
mod netcommon;

use netcommon::{env, sh};
use rcd_proto::labels as L;
use rcd_proto::v1 as pb;
use std::time::Duration;
use tonic::Code;

const T: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_volume_outlives_its_container_and_is_refused_while_used() {
    let e = env(11).await;
    let mut o = sh("echo kept > /data/f && echo more > /data/g");
    o.volumes = vec!["store:/data".into()];
    e.run("w", "", o).await;
    assert_eq!(e.wait("w", T).await, 0);
    let labels = e.labels("w").await;
    let vols: serde_json::Value = serde_json::from_str(&labels[L::VOLUMES]).unwrap();
    assert_eq!(
        vols,
        serde_json::json!([{"source": "store", "destination": "/data", "readonly": false, "kind": "volume"}])
    );
    let mut v = e.volumes();
    let got = v
        .get(pb::GetVolumeRequest {
            name: "store".into(),
            size: true,
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(got.used_by, [e.cid("w")]);
    assert_eq!(got.size, 10);
    assert!(!got.anonymous);
    assert!(
        got.mountpoint.ends_with("/volumes/default/store/_data"),
        "{got:?}"
    );
    let err = v
        .delete(pb::DeleteVolumeRequest {
            name: "store".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message()
            .contains(&format!("in use by container {:?}", e.cid("w"))),
        "{err:?}"
    );
    e.remove("w", true).await;

    // a new container sees what the first wrote
    let mut o = sh("grep -q kept /data/f");
    o.volumes = vec!["store:/data:ro".into()];
    e.run("r", "", o).await;
    assert_eq!(e.wait("r", T).await, 0);
    e.remove("r", true).await;
    v.delete(pb::DeleteVolumeRequest {
        name: "store".into(),
    })
    .await
    .unwrap();
    let err = v
        .get(pb::GetVolumeRequest {
            name: "store".into(),
            size: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = v
        .create(pb::CreateVolumeRequest {
            name: "../x".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_volumes_binds_and_prune() {
    let e = env(12).await;
    let host = e.dir.path().join("hostdir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in"), "from the host\n").unwrap();
    let made = e.dir.path().join("made/by/rcd");
    let mut o = sh("grep -q 'from the host' /h/in && ! touch /h/x 2>/dev/null && echo y > /m/y && echo z > /anon/z");
    o.volumes = vec![
        format!("{}:/h:ro", host.display()),
        format!("{}:/m", made.display()),
        "/anon".into(),
    ];
    e.run("c", "", o).await;
    assert_eq!(
        e.wait("c", T).await,
        0,
        "{}",
        netcommon::tail(&e.rcd.log_text())
    );
    assert!(!host.join("x").exists());
    assert_eq!(std::fs::read_to_string(made.join("y")).unwrap(), "y\n");
    let mut v = e.volumes();
    let list = v
        .list(pb::ListVolumesRequest { size: false })
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(list.len(), 1, "{list:?}");
    let anon = list[0].clone();
    assert!(anon.anonymous && anon.name.len() == 64, "{anon:?}");
    assert_eq!(anon.used_by, [e.cid("c")]);
    // prune leaves volumes in use, and named ones unless all
    v.create(pb::CreateVolumeRequest {
        name: "named".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let pruned = v
        .prune(pb::PruneVolumesRequest { all: false })
        .await
        .unwrap()
        .into_inner();
    assert!(pruned.deleted.is_empty(), "{pruned:?}");
    // rm -v takes the anonymous volume along
    e.remove("c", true).await;
    let list = v
        .list(pb::ListVolumesRequest { size: false })
        .await
        .unwrap()
        .into_inner()
        .volumes;
    assert_eq!(
        list.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["named"]
    );
    // without -v it stays, and prune (anonymous only) takes it
    let mut o = sh("echo 1234 > /anon/z");
    o.volumes = vec!["/anon".into()];
    e.run("d", "", o).await;
    assert_eq!(e.wait("d", T).await, 0);
    e.remove("d", false).await;
    let pruned = v
        .prune(pb::PruneVolumesRequest { all: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted.len(), 1, "{pruned:?}");
    assert_eq!(pruned.reclaimed_bytes, 5);
    let pruned = v
        .prune(pb::PruneVolumesRequest { all: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pruned.deleted, ["named"]);
    // bad volume specs name the value
    for bad in ["rel:/x:zz", "relative-dest", "/a:/b:c:d"] {
        let mut o = sh("true");
        o.volumes = vec![bad.into()];
        let err = e.create("bad", "", o).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        assert!(
            err.message().contains(&format!("invalid volume {bad:?}")),
            "{err:?}"
        );
    }
}
