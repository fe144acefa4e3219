//! Work spread over the machine's cores: the `lstat`s of a release check, the `fsync`s of a
//! durable release, the files of a whole checkout. Scoped threads, contiguous parts, results
//! in the order of the items.

/// The threads worth spreading work over: the machine's cores, at most 8.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8)
}

/// `f` of each item, in order, spread over up to `threads` threads (on this thread when one
/// thread or fewer than two items a thread).
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().div_ceil(2).max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let workers: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>()))
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().expect("a worker thread panicked"))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_the_order_of_the_items_whatever_the_threads() {
        let items: Vec<u32> = (0..1001).collect();
        for threads in [1, 2, 3, 8, 2000] {
            let doubled = map(&items, threads, |n| n * 2);
            assert_eq!(doubled, items.iter().map(|n| n * 2).collect::<Vec<_>>());
        }
        assert!(map(&[] as &[u32], 4, |n| *n).is_empty());
    }
}
