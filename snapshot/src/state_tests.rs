use super::*;
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct V1 {
    name: String,
    regs: Vec<u64>,
}

/// What a newer minor adds: a defaulted field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct V1Minor1 {
    name: String,
    regs: Vec<u64>,
    #[serde(default)]
    tsc_khz: Option<u32>,
}

fn sample() -> V1 {
    V1 {
        name: "vm0".into(),
        regs: vec![1, 2, 3, u64::MAX],
    }
}

fn tmpdir() -> crate::test_util::TempDir {
    crate::test_util::tmpdir("state")
}

#[test]
fn round_trip() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let back: V1 = read_state_file(&p).unwrap();
    assert_eq!(back, sample());
    // No temp file left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    let bytes = fs::read(&p).unwrap();
    assert_eq!(&bytes[..8], b"TARTSNAP");
    assert_eq!(
        &bytes[HEADER_LEN..bytes.len() - CRC_LEN],
        serde_json::to_vec(&sample()).unwrap().as_slice()
    );
}

#[test]
fn overwrite_is_atomic_replacement() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let mut other = sample();
    other.name = "vm1".into();
    write_state_file(&p, &other).unwrap();
    assert_eq!(read_state_file::<V1>(&p).unwrap(), other);
}

#[test]
fn missing_file() {
    let err = read_state_file::<V1>(Path::new("/nonexistent/tartarus.snap")).unwrap_err();
    assert!(matches!(err, StateError::Read { .. }), "{err}");
    assert!(err.to_string().contains("cannot read snapshot file"));
}

#[test]
fn truncated_everywhere() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let full = fs::read(&p).unwrap();
    for cut in [
        8,
        10,
        19,
        20,
        21,
        full.len() / 2,
        full.len() - 8,
        full.len() - 1,
    ] {
        fs::write(&p, &full[..cut]).unwrap();
        let err = read_state_file::<V1>(&p).unwrap_err();
        assert!(
            matches!(err, StateError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
        assert!(err.to_string().contains("truncated"));
    }
    // A prefix of the magic is also a truncated snapshot, anything else is not a snapshot.
    fs::write(&p, &full[..4]).unwrap();
    assert!(matches!(
        read_state_file::<V1>(&p).unwrap_err(),
        StateError::BadMagic { .. } | StateError::Truncated { .. }
    ));
    fs::write(&p, b"").unwrap();
    assert!(matches!(
        read_state_file::<V1>(&p).unwrap_err(),
        StateError::Truncated { .. }
    ));
}

#[test]
fn every_flipped_byte_is_refused() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let full = fs::read(&p).unwrap();
    for i in 0..full.len() {
        let mut b = full.clone();
        b[i] ^= 0x20;
        fs::write(&p, &b).unwrap();
        let err = read_state_file::<V1>(&p).unwrap_err();
        match i {
            0..=7 => assert!(matches!(err, StateError::BadMagic { .. }), "{i}: {err}"),
            12..=19 => assert!(
                matches!(
                    err,
                    StateError::Truncated { .. } | StateError::TrailingData(_)
                ),
                "{i}: {err}"
            ),
            _ => {
                assert!(matches!(err, StateError::CrcMismatch { .. }), "{i}: {err}");
                assert!(err
                    .to_string()
                    .starts_with("snapshot file is corrupt: CRC mismatch"));
            }
        }
    }
}

#[test]
fn wrong_magic() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    let bytes = encode_envelope(*b"QEMUSNAP", FORMAT_MAJOR, FORMAT_MINOR, b"{}");
    fs::write(&p, bytes).unwrap();
    let err = read_state_file::<serde_json::Value>(&p).unwrap_err();
    assert_eq!(err.to_string(), "not a Tartarus snapshot (bad magic)");
}

#[test]
fn trailing_garbage() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let mut b = fs::read(&p).unwrap();
    b.extend_from_slice(b"xx");
    fs::write(&p, &b).unwrap();
    assert!(matches!(
        read_state_file::<V1>(&p).unwrap_err(),
        StateError::TrailingData(2)
    ));
}

#[test]
fn major_bump_refused() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    let body = serde_json::to_vec(&sample()).unwrap();
    fs::write(&p, encode_envelope(STATE_MAGIC, FORMAT_MAJOR + 1, 3, &body)).unwrap();
    let err = read_state_file::<V1>(&p).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "snapshot format version {}.3, this VMM reads major {}",
            FORMAT_MAJOR + 1,
            FORMAT_MAJOR
        )
    );
    let s = describe(&p).unwrap();
    assert!(!s.supported);
    assert!(s.crc_ok);
}

#[test]
fn newer_minor_with_unknown_field_is_read_and_ignored() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    let newer = V1Minor1 {
        name: "vm0".into(),
        regs: vec![1, 2, 3, u64::MAX],
        tsc_khz: Some(2_000_000),
    };
    let body = serde_json::to_vec(&newer).unwrap();
    fs::write(
        &p,
        encode_envelope(STATE_MAGIC, FORMAT_MAJOR, FORMAT_MINOR + 1, &body),
    )
    .unwrap();
    // Older reader: the unknown field is dropped.
    assert_eq!(read_state_file::<V1>(&p).unwrap(), sample());
    let s = describe(&p).unwrap();
    assert!(s.supported && s.newer_minor);
    assert_eq!(s.body["tsc_khz"], 2_000_000);

    // Newer reader on an older file: the field takes its default.
    write_state_file(&p, &sample()).unwrap();
    let n: V1Minor1 = read_state_file(&p).unwrap();
    assert_eq!(n.tsc_khz, None);
}

#[test]
fn body_that_does_not_parse() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &serde_json::json!({"name": 5})).unwrap();
    let err = read_state_file::<V1>(&p).unwrap_err();
    assert!(matches!(err, StateError::Parse(_)));
    assert!(err.to_string().contains("invalid type"), "{err}");
}

#[test]
fn describe_reports_crc_status() {
    let dir = tmpdir();
    let p = dir.join("vm.snap");
    write_state_file(&p, &sample()).unwrap();
    let s = describe(&p).unwrap();
    assert_eq!(s.version, (FORMAT_MAJOR, FORMAT_MINOR));
    assert!(s.crc_ok && s.supported && !s.newer_minor);
    assert_eq!(s.body["name"], "vm0");
    assert_eq!(s.file_len, s.body_len + 28);

    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    fs::write(&p, &b).unwrap();
    let s = describe(&p).unwrap();
    assert!(!s.crc_ok);
}

#[test]
fn persist_trait_is_implementable() {
    struct Counter(u32);
    impl Persist for Counter {
        type State = u32;
        type Ctx = u32;
        type Error = ();
        fn save(&self) -> u32 {
            self.0
        }
        fn restore(ctx: u32, state: &u32) -> std::result::Result<Self, ()> {
            Ok(Counter(ctx + state))
        }
    }
    let c = Counter::restore(1, &Counter(41).save()).unwrap();
    assert_eq!(c.0, 42);
}
