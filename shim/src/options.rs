//! containerd's runc shim options (`containerd.runc.v1.Options`), read from the Any that
//! comes with Create, so `ctr run --runc-binary` and CRI's `BinaryName`/`Root` work here too.
//! Only the fields rshim uses are decoded; the message is parsed as an unknown-field bag.

use protobuf::well_known_types::any::Any;
use protobuf::Message;

use crate::Error;

#[derive(Debug, Default, PartialEq)]
pub struct RuncOptions {
    pub binary_name: String,
    pub root: String,
    pub systemd_cgroup: bool,
}

const BINARY_NAME: u32 = 6;
const ROOT: u32 = 7;
const SYSTEMD_CGROUP: u32 = 9;

pub fn parse(any: Option<&Any>) -> Result<RuncOptions, Error> {
    let Some(any) = any else {
        return Ok(RuncOptions::default());
    };
    // Other runtimes' option types are not ours to interpret.
    if !any.type_url.ends_with("containerd.runc.v1.Options") {
        return Ok(RuncOptions::default());
    }
    let bag = protobuf::well_known_types::empty::Empty::parse_from_bytes(&any.value)
        .map_err(|e| Error::Invalid(format!("decoding runtime options {}: {e}", any.type_url)))?;
    let unknown = bag.special_fields.unknown_fields();
    let string = |n: u32| -> Result<String, Error> {
        match unknown.get(n) {
            Some(protobuf::UnknownValueRef::LengthDelimited(b)) => String::from_utf8(b.to_vec())
                .map_err(|_| Error::Invalid(format!("runtime option field {n} is not utf-8"))),
            _ => Ok(String::new()),
        }
    };
    Ok(RuncOptions {
        binary_name: string(BINARY_NAME)?,
        root: string(ROOT)?,
        systemd_cgroup: matches!(unknown.get(SYSTEMD_CGROUP), Some(protobuf::UnknownValueRef::Varint(v)) if v != 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_runc_options() {
        // field 6 "runc", field 7 "/r", field 9 true
        let value = vec![
            0x32, 4, b'r', b'u', b'n', b'c', 0x3a, 2, b'/', b'r', 0x48, 1,
        ];
        let any = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            parse(Some(&any)).unwrap(),
            RuncOptions {
                binary_name: "runc".into(),
                root: "/r".into(),
                systemd_cgroup: true
            }
        );
        assert_eq!(parse(None).unwrap(), RuncOptions::default());
        let bad = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![0x32, 40],
            ..Default::default()
        };
        let e = parse(Some(&bad)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("decoding runtime options containerd.runc.v1.Options"),
            "{e}"
        );
    }
}
