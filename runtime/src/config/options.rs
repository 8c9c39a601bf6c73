//! containerd's runtime options for a task: the `runtimeoptions.v1.Options` message CRI (and
//! `ctr --runtime-config-path`) attach, whose `config_path` names the shim's config file.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

/// `Options.config_path`'s field number in `runtimeoptions/v1/api.proto`.
const CONFIG_PATH_FIELD: u32 = 2;
/// The longest option message accepted.
const MAX_OPTIONS_BYTES: usize = 64 * 1024;

/// The config path carried by `options`, if it is a `runtimeoptions.v1.Options` naming one.
/// Options of other runtimes (e.g. runc's) are ignored.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, String> {
    let Some(any) = options else { return Ok(None) };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return Ok(None);
    }
    if any.value.len() > MAX_OPTIONS_BYTES {
        return Err(format!("runtime options of {} bytes", any.value.len()));
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    let bad = |e: protobuf::Error| format!("runtime options: {e}");
    while !input.eof().map_err(bad)? {
        let tag = input.read_raw_varint32().map_err(bad)?;
        let (field, wire) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire == 2 {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            let wire_type = protobuf::rt::WireType::new(wire)
                .ok_or_else(|| format!("runtime options: bad wire type {wire}"))?;
            input.skip_field(wire_type).map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        let mut a = Any::new();
        a.type_url = type_url.into();
        a.value = value;
        a
    }

    #[test]
    fn reads_config_path() {
        // type_url = "x" (field 1), config_path = "/etc/moat.toml" (field 2)
        let mut v = vec![0x0a, 1, b'x', 0x12, 14];
        v.extend_from_slice(b"/etc/moat.toml");
        let a = any("runtimeoptions.v1.Options", v);
        assert_eq!(
            config_path(Some(&a)).unwrap(),
            Some(PathBuf::from("/etc/moat.toml"))
        );
        assert_eq!(config_path(None).unwrap(), None);
        let runc = any("containerd.runc.v1.Options", vec![0x12, 1, b'a']);
        assert_eq!(config_path(Some(&runc)).unwrap(), None);
        let broken = any("runtimeoptions.v1.Options", vec![0x12, 50, b'a']);
        assert!(config_path(Some(&broken)).is_err());
    }
}
