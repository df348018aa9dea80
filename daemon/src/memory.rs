//! What an idle daemon holds. Starting touches a lot that idling never does again: parsing the
//! kernel's BTF, loading and trying programs, the first gRPC calls; a traced run touches the
//! tracing and collection code and leaves megabytes of freed heap. At rest the daemon hands
//! freed heap back and pages its own code out, so that its resident memory is what idling
//! touches (code is read back from the page cache, or the file, the first time it runs again).

use std::io;

/// Hands freed heap pages back to the kernel and pages out sonded's own code and read-only
/// data. Called when the daemon has started and whenever its last run ends.
pub fn release_at_rest() {
    release_freed_heap();
    match page_out_own_code() {
        Ok(bytes) => tracing::debug!(bytes, "sonded's code paged out"),
        Err(err) => tracing::debug!(%err, "sonded's code stays in memory"),
    }
}

/// Largest allocation served from the heap; larger ones are mapped on their own and unmapped
/// when freed.
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;

/// Sets the allocator up for a daemon whose large buffers come and go with runs (a traced
/// run's event batches and per-packet stamps take megabytes): glibc would raise its threshold
/// for mapping an allocation on its own after the first large free, and serve the next ones
/// from arenas that keep their pages. Fixed, a run's large buffers go back when freed. Call
/// before any thread starts.
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: a documented mallopt parameter, set before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Hands the heap pages freed so far back to the kernel (glibc keeps them otherwise).
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; it touches no live
    // allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Advises the kernel to reclaim the pages of every read-only mapping of the executable (its
/// code and constants: clean pages of the file, never its data); returns the bytes advised.
fn page_out_own_code() -> io::Result<usize> {
    let exe = std::fs::read_link("/proc/self/exe")?;
    let exe = exe.to_string_lossy();
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for (start, end) in read_only_mappings_of(&maps, &exe) {
        let length = end - start;
        // SAFETY: a range of this process's own address space, as the kernel listed it;
        // MADV_PAGEOUT only drops clean pages of a file mapping, which the kernel reads back
        // on the next access: no content changes.
        let done = unsafe { libc::madvise(start as *mut libc::c_void, length, libc::MADV_PAGEOUT) };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        advised += length;
    }
    Ok(advised)
}

/// The address ranges of `path`'s mappings in `maps` (`/proc/self/maps`) that are not
/// writable.
fn read_only_mappings_of(maps: &str, path: &str) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let permissions = fields.next()?;
            let file = fields.nth(3)?;
            if file != path || permissions.contains('w') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_executables_read_only_mappings_are_paged_out() {
        let maps = "\
5600a0000000-5600a0100000 r--p 00000000 fe:00 42 /usr/bin/sonded
5600a0100000-5600a0900000 r-xp 00100000 fe:00 42 /usr/bin/sonded
5600a0900000-5600a0a00000 rw-p 00900000 fe:00 42 /usr/bin/sonded
5600a1000000-5600a1100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000200000 r-xp 00000000 fe:00 7 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000400000-7f0000500000 r--s 00000000 00:0e 9 anon_inode:bpf-map
";
        assert_eq!(
            read_only_mappings_of(maps, "/usr/bin/sonded"),
            vec![
                (0x5600_a000_0000, 0x5600_a010_0000),
                (0x5600_a010_0000, 0x5600_a090_0000)
            ]
        );
    }

    #[test]
    fn paging_out_this_process_code_lowers_its_resident_file_pages() {
        let resident = || {
            std::fs::read_to_string("/proc/self/status")
                .expect("status")
                .lines()
                .find_map(|line| line.strip_prefix("RssFile:"))
                .and_then(|kb| kb.trim().trim_end_matches(" kB").parse::<u64>().ok())
                .expect("RssFile")
        };
        let before = resident();
        let advised = page_out_own_code().expect("madvise");
        assert!(advised > 0, "no read-only mapping of the test binary found");
        let after = resident();
        assert!(
            after < before,
            "RssFile {before} kB before, {after} kB after"
        );
    }
}
