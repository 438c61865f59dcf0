//! Reading a device's config space (virtio spec 2.5) at offsets and lengths the guest chooses.

/// Copies the bytes of `config` at `offset` into `data`, as a driver's config-space read sees
/// them: bytes past the end of `config` read as zero. Any `offset` and length is answered
/// without panicking (offsets past the end up to `u64::MAX`, reads straddling the end, empty
/// reads); `data` is fully overwritten either way.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(tail) = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
    else {
        return;
    };
    let n = data.len().min(tail.len());
    data[..n].copy_from_slice(&tail[..n]);
}

#[cfg(test)]
mod tests {
    use super::read_config_bytes;

    /// A 24-byte config space (virtio-blk's size) holding 1, 2, ... 24.
    fn config() -> Vec<u8> {
        (1..=24).collect()
    }

    /// What a guest read of `len` bytes at `offset` returns, starting from a dirty buffer.
    fn read(offset: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0xee; len];
        read_config_bytes(&config(), offset, &mut data);
        data
    }

    #[test]
    fn reads_inside_the_space_copy_it() {
        assert_eq!(read(0, 24), config());
        assert_eq!(read(0, 8), (1..=8).collect::<Vec<u8>>());
        assert_eq!(read(20, 4), vec![21, 22, 23, 24]);
        assert_eq!(read(23, 1), vec![24]);
    }

    #[test]
    fn reads_straddling_the_end_are_zero_filled() {
        assert_eq!(read(22, 4), vec![23, 24, 0, 0]);
        assert_eq!(read(16, 256), [&config()[16..], &[0; 248][..]].concat());
        assert_eq!(read(0, 4096), [&config()[..], &[0; 4072][..]].concat());
    }

    #[test]
    fn reads_past_the_end_are_all_zero() {
        for offset in [24, 25, 0xeff, 1 << 32, 1 << 63] {
            assert_eq!(read(offset, 8), vec![0; 8], "offset {offset:#x}");
        }
    }

    #[test]
    fn offsets_near_u64_max_neither_wrap_nor_panic() {
        for offset in [u64::MAX, u64::MAX - 1, u64::MAX - 7, u64::MAX - 23] {
            // offset + len would wrap around to the start of the space: still all zero.
            assert_eq!(read(offset, 8), vec![0; 8], "offset {offset:#x}");
            assert_eq!(read(offset, 64), vec![0; 64], "offset {offset:#x}");
        }
    }

    #[test]
    fn zero_length_reads_do_nothing() {
        for offset in [0, 12, 24, 25, u64::MAX] {
            assert_eq!(read(offset, 0), Vec::<u8>::new(), "offset {offset:#x}");
        }
    }

    #[test]
    fn an_empty_space_reads_as_zero() {
        for offset in [0, 1, u64::MAX] {
            let mut data = [0xee; 4];
            read_config_bytes(&[], offset, &mut data);
            assert_eq!(data, [0; 4], "offset {offset:#x}");
        }
    }
}
