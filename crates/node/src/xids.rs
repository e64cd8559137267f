//! Xid minting. The node draws xids from a seeded generator so that the
//! simulator (seeded from the run's seed) replays exactly and a server
//! (seeded from the OS at start-up) gets ids no other instance will pick.
//!
//! The generator is SplitMix64 (two outputs per 128-bit xid): tiny, fast
//! and well distributed, which is all xid minting needs; it is not
//! cryptographic and xids are not secrets. A hand-written one keeps the
//! node free of an RNG crate whose output could change between versions
//! and break seed replay.

use concord_proto::Xid;

#[derive(Clone, Debug)]
pub struct XidMinter {
    state: u64,
}

impl XidMinter {
    pub fn new(seed: u64) -> XidMinter {
        XidMinter { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0), for jitter; the slight
    /// modulo bias does not matter there.
    pub fn draw_below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }

    /// A fresh xid for which `taken` is false (never 0).
    pub fn mint(&mut self, taken: impl Fn(Xid) -> bool) -> Xid {
        loop {
            let xid = Xid((u128::from(self.next_u64()) << 64) | u128::from(self.next_u64()));
            if xid.0 != 0 && !taken(xid) {
                return xid;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_xids_and_taken_ones_are_skipped() {
        let mut a = XidMinter::new(42);
        let mut b = XidMinter::new(42);
        let first = a.mint(|_| false);
        assert_eq!(first, b.mint(|_| false));
        let second = a.mint(|x| x == first);
        assert_ne!(second, first);
        assert_ne!(XidMinter::new(43).mint(|_| false), first);
    }
}
