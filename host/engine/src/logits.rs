//! Where a step's logits stay: in host memory, or on the device that
//! computed them.
//!
//! On an accelerator a row of logits is `vocab` floats (0.5 MB for
//! DeepSeek-V3/R1) that most steps never need whole: greedy decoding needs
//! one id, a sampler plugin's `top-k` a few dozen entries. [`DeviceLogits`]
//! keeps the row where the forward pass left it and answers each query
//! there, moving only the answer; a query that needs the whole row (a
//! stochastic draw, a token-set query) copies it once and every later query
//! of the step reads that copy. [`LogitsTraffic`] counts the bytes each way,
//! so what a step moves is measured, not assumed.
//!
//! The placement is the engine's choice ([`LogitsPlacement`]): on the CPU
//! the rows are host memory already and stay plain vectors, unless the
//! device path is asked for, which is how the tests run it on the CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use deepwasm_plugins::{LogitsError, LogitsResult, LogitsSource, ScoredToken, TopK, argmax, top_k};

/// Where the engine keeps each step's logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogitsPlacement {
    /// On the device when the model runs on one, in host memory on the CPU.
    #[default]
    Auto,
    /// Always copied to host memory after the forward pass.
    Host,
    /// Always left where the forward pass computed them, also on the CPU.
    Device,
}

impl LogitsPlacement {
    /// Whether rows computed on `device` stay there.
    pub fn on_device(self, device: &Device) -> bool {
        match self {
            LogitsPlacement::Auto => !device.is_cpu(),
            LogitsPlacement::Host => false,
            LogitsPlacement::Device => true,
        }
    }
}

/// Bytes of logits moved between the device and the host, and steps taken,
/// since the engine started. Counted only for rows kept on the device:
/// rows in host memory move nothing.
#[derive(Debug, Default)]
pub struct LogitsTraffic {
    to_host: AtomicU64,
    to_device: AtomicU64,
    rows: AtomicU64,
    whole_rows: AtomicU64,
}

impl LogitsTraffic {
    /// Bytes copied from the device to the host.
    pub fn to_host_bytes(&self) -> u64 {
        self.to_host.load(Ordering::Relaxed)
    }

    /// Bytes copied from the host to the device (ids of a query).
    pub fn to_device_bytes(&self) -> u64 {
        self.to_device.load(Ordering::Relaxed)
    }

    /// Rows of logits kept on the device (one per sequence per step).
    pub fn device_rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }

    /// Of those, rows a query needed whole and copied.
    pub fn whole_rows_copied(&self) -> u64 {
        self.whole_rows.load(Ordering::Relaxed)
    }

    /// Counts `bytes` copied to the host outside a row's queries (a scored
    /// prompt's rows, hidden states).
    pub(crate) fn count_to_host(&self, bytes: usize) {
        self.down(bytes);
    }

    fn down(&self, bytes: usize) {
        self.to_host.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn up(&self, bytes: usize) {
        self.to_device.fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Entries per block in [`DeviceLogits::top_k`]'s first pass.
const BLOCK: usize = 64;

/// A block of a row gathered to the host: the id of its first entry, and
/// its entries.
pub(crate) type Block = (u32, Vec<f32>);

/// One row of logits kept on its device.
#[derive(Debug)]
pub struct DeviceLogits {
    /// `[vocab]`, f32, contiguous.
    row: Tensor,
    len: usize,
    /// `vocab - id` for every id, u32, on the row's device: ranks ties by
    /// id without a sort (shared by every row of a pass).
    reversed_ids: Arc<Tensor>,
    /// The whole row, once a query needed it.
    host: Mutex<Option<Arc<Vec<f32>>>>,
    traffic: Arc<LogitsTraffic>,
}

/// Tensors a pass's rows share, made once per vocabulary and device.
#[derive(Debug, Default)]
pub struct DeviceIds {
    reversed: Mutex<Option<Arc<Tensor>>>,
}

impl DeviceIds {
    /// `vocab - id` for ids `0..vocab` on `device`.
    fn reversed(&self, vocab: usize, device: &Device) -> candle_core::Result<Arc<Tensor>> {
        let mut slot = self.reversed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slot.as_ref()
            && t.dim(0)? == vocab
            && t.device().same_device(device)
        {
            return Ok(t.clone());
        }
        let ids: Vec<u32> = (0..vocab as u32).map(|i| vocab as u32 - i).collect();
        let t = Arc::new(Tensor::from_vec(ids, vocab, device)?);
        *slot = Some(t.clone());
        Ok(t)
    }
}

pub(crate) fn device_error(e: candle_core::Error) -> LogitsError {
    LogitsError(e.to_string())
}

impl DeviceLogits {
    /// Row `row` of a pass's `[rows, vocab]` f32 logits, left where it is.
    pub fn new(
        logits: &Tensor,
        row: usize,
        ids: &DeviceIds,
        traffic: &Arc<LogitsTraffic>,
    ) -> candle_core::Result<DeviceLogits> {
        let row = logits.get(row)?.to_dtype(DType::F32)?.contiguous()?;
        let len = row.dim(0)?;
        traffic.rows.fetch_add(1, Ordering::Relaxed);
        Ok(DeviceLogits {
            reversed_ids: ids.reversed(len, row.device())?,
            row,
            len,
            host: Mutex::new(None),
            traffic: traffic.clone(),
        })
    }

    /// Another row on the same device (an edited copy of this one), counted
    /// in this row's traffic but not as a row of its own.
    pub(crate) fn derived(&self, row: Tensor) -> candle_core::Result<DeviceLogits> {
        let len = row.dim(0)?;
        Ok(DeviceLogits {
            reversed_ids: self.reversed_ids.clone(),
            row: row.contiguous()?,
            len,
            host: Mutex::new(None),
            traffic: self.traffic.clone(),
        })
    }

    /// The row, `[vocab]` f32 on its device.
    pub(crate) fn row(&self) -> &Tensor {
        &self.row
    }

    /// The host copy, when some query made it.
    fn copied(&self) -> Option<Arc<Vec<f32>>> {
        self.host.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn scalar_f32(&self, t: &Tensor) -> LogitsResult<f32> {
        let v = t.to_scalar::<f32>().map_err(device_error)?;
        self.traffic.down(4);
        Ok(v)
    }

    pub(crate) fn vec_f32(&self, t: &Tensor) -> LogitsResult<Vec<f32>> {
        let v = t.to_vec1::<f32>().map_err(device_error)?;
        self.traffic.down(4 * v.len());
        Ok(v)
    }

    /// The maximum of every block of [`BLOCK`] entries, in order (the last
    /// block may be shorter).
    fn block_maxima(&self) -> LogitsResult<Vec<f32>> {
        self.per_block(&self.row, |b, dim| b.max(dim))
    }

    /// `reduce` (over dimension `dim`) of every block of [`BLOCK`] entries
    /// of `values` (`[len]`, on this row's device), in order.
    pub(crate) fn per_block(
        &self,
        values: &Tensor,
        reduce: impl Fn(&Tensor, usize) -> candle_core::Result<Tensor>,
    ) -> LogitsResult<Vec<f32>> {
        let full = self.len / BLOCK;
        let mut out = if full > 0 {
            let blocks = values
                .narrow(0, 0, full * BLOCK)
                .and_then(|b| b.reshape((full, BLOCK)))
                .and_then(|b| reduce(&b, 1))
                .map_err(device_error)?;
            self.vec_f32(&blocks)?
        } else {
            Vec::new()
        };
        if !self.len.is_multiple_of(BLOCK) {
            let tail = values
                .narrow(0, full * BLOCK, self.len - full * BLOCK)
                .and_then(|t| reduce(&t, 0))
                .map_err(device_error)?;
            out.push(self.scalar_f32(&tail)?);
        }
        Ok(out)
    }

    /// The entries of blocks `chosen` (ascending), each with the id of its
    /// first entry.
    pub(crate) fn gather_blocks(&self, chosen: &[u32]) -> LogitsResult<Vec<Block>> {
        let full = (self.len / BLOCK) as u32;
        let (whole, tail): (Vec<u32>, Vec<u32>) = chosen.iter().partition(|&&b| b < full);
        let mut out = Vec::with_capacity(chosen.len());
        if !whole.is_empty() {
            let n = whole.len();
            let ids = self.upload(whole.clone())?;
            let rows = self
                .row
                .narrow(0, 0, full as usize * BLOCK)
                .and_then(|r| r.reshape((full as usize, BLOCK)))
                .and_then(|r| r.index_select(&ids, 0))
                .and_then(|r| r.reshape(n * BLOCK))
                .map_err(device_error)?;
            let values = self.vec_f32(&rows)?;
            for (block, chunk) in whole.iter().zip(values.chunks(BLOCK)) {
                out.push((block * BLOCK as u32, chunk.to_vec()));
            }
        }
        if !tail.is_empty() {
            let start = full as usize * BLOCK;
            let rest = self
                .row
                .narrow(0, start, self.len - start)
                .map_err(device_error)?;
            out.push((start as u32, self.vec_f32(&rest)?));
        }
        Ok(out)
    }

    /// The blocks whose maximum is at least `floor` (or NaN), gathered, or
    /// `None` when more than `most` blocks are.
    pub(crate) fn blocks_reaching(
        &self,
        floor: f32,
        most: usize,
    ) -> LogitsResult<Option<Vec<Block>>> {
        let chosen = reaching(&self.block_maxima()?, floor);
        if chosen.len() > most {
            return Ok(None);
        }
        self.gather_blocks(&chosen).map(Some)
    }

    /// The maximum entry and the sum of all, in one trip: a NaN sum means
    /// some entry is NaN (or both infinities are present).
    pub(crate) fn max_and_sum(&self) -> LogitsResult<(f32, f32)> {
        if self.len == 0 {
            return Ok((f32::NEG_INFINITY, 0.0));
        }
        let both = Tensor::stack(
            &[
                self.row.max(0).map_err(device_error)?,
                self.row.sum(0).map_err(device_error)?,
            ],
            0,
        )
        .map_err(device_error)?;
        let v = self.vec_f32(&both)?;
        Ok((v[0], v[1]))
    }

    /// Uploads `values` (`u8` or `f32` rows of a query) to the row's device.
    pub(crate) fn upload<T: candle_core::WithDType>(&self, values: Vec<T>) -> LogitsResult<Tensor> {
        let n = values.len();
        let t = Tensor::from_vec(values, n, self.row.device()).map_err(device_error)?;
        self.traffic.up(n * T::DTYPE.size_in_bytes());
        Ok(t)
    }
}

/// The blocks whose maximum is at least `floor`, or NaN (which may hide
/// anything), ascending.
fn reaching(maxima: &[f32], floor: f32) -> Vec<u32> {
    maxima
        .iter()
        .enumerate()
        .filter(|(_, m)| m.is_nan() || **m >= floor)
        .map(|(i, _)| i as u32)
        .collect()
}

impl LogitsSource for DeviceLogits {
    fn len(&self) -> usize {
        self.len
    }

    fn argmax(&self) -> LogitsResult<ScoredToken> {
        if let Some(v) = self.copied() {
            return Ok(argmax(&v));
        }
        if self.len == 0 {
            return Ok(argmax(&[]));
        }
        let max = self.row.max_keepdim(0).map_err(device_error)?;
        let value = self.scalar_f32(&max.squeeze(0).map_err(device_error)?)?;
        if !value.is_finite() {
            // NaN or infinities: the host's rules decide, on the whole row.
            return Ok(argmax(&self.values()?));
        }
        // The lowest id holding the maximum: among the matches, the largest
        // `vocab - id`.
        let best = self
            .row
            .broadcast_eq(&max)
            .and_then(|m| m.to_dtype(DType::U32))
            .and_then(|m| m.mul(&self.reversed_ids))
            .and_then(|m| m.max(0))
            .and_then(|m| m.to_scalar::<u32>())
            .map_err(device_error)?;
        self.traffic.down(4);
        Ok(ScoredToken {
            token: self.len as u32 - best,
            logit: value,
        })
    }

    fn top_k(&self, k: usize) -> LogitsResult<Vec<ScoredToken>> {
        let k = k.min(self.len);
        if let Some(v) = self.copied() {
            return Ok(top_k(&v, k));
        }
        if k == 0 {
            return Ok(Vec::new());
        }
        let blocks = self.len.div_ceil(BLOCK);
        // Past a quarter of the blocks the gather costs about the row.
        if k == 1 {
            return Ok(vec![self.argmax()?]);
        }
        if k * 4 > blocks {
            return Ok(top_k(&self.values()?, k));
        }
        // The k-th largest block maximum is a floor: k blocks hold an entry
        // at least that high, so every entry of the top k is at least that
        // high, and only blocks whose maximum reaches it can hold one.
        let maxima = self.block_maxima()?;
        let mut sorted: Vec<f32> = maxima
            .iter()
            .map(|m| if m.is_nan() { f32::INFINITY } else { *m })
            .collect();
        sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let chosen = reaching(&maxima, sorted[k - 1]);
        if chosen.len() * 4 > blocks {
            return Ok(top_k(&self.values()?, k));
        }
        let mut best = TopK::new(k);
        for (base, values) in self.gather_blocks(&chosen)? {
            best.scan(&values, base);
        }
        Ok(best.into_sorted())
    }

    fn get(&self, ids: &[u32]) -> LogitsResult<Vec<f32>> {
        if let Some(v) = self.copied() {
            return LogitsSource::get(&v, ids);
        }
        if ids.len() * 4 > self.len {
            return LogitsSource::get(&self.values()?, ids);
        }
        let inside: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&t| (t as usize) < self.len)
            .collect();
        let mut found = if inside.is_empty() {
            Vec::new()
        } else {
            let index = self.upload(inside)?;
            self.vec_f32(&self.row.index_select(&index, 0).map_err(device_error)?)?
        }
        .into_iter();
        Ok(ids
            .iter()
            .map(|&t| match (t as usize) < self.len {
                true => found.next().unwrap_or(f32::NEG_INFINITY),
                false => f32::NEG_INFINITY,
            })
            .collect())
    }

    fn log_sum_exp(&self) -> LogitsResult<f32> {
        if let Some(v) = self.copied() {
            return Ok(deepwasm_plugins::log_sum_exp(&v));
        }
        if self.len == 0 {
            return Ok(f32::NEG_INFINITY);
        }
        let max = self.row.max_keepdim(0).map_err(device_error)?;
        let m = self.scalar_f32(&max.squeeze(0).map_err(device_error)?)?;
        if !m.is_finite() {
            return Ok(deepwasm_plugins::log_sum_exp(&self.values()?));
        }
        let sum = self
            .row
            .broadcast_sub(&max)
            .and_then(|d| d.exp())
            .and_then(|e| e.sum_all())
            .map_err(device_error)?;
        Ok(m + self.scalar_f32(&sum)?.ln())
    }

    fn range(&self, start: usize, len: usize) -> LogitsResult<Vec<f32>> {
        if let Some(v) = self.copied() {
            return LogitsSource::range(&v, start, len);
        }
        let start = start.min(self.len);
        let end = start.saturating_add(len).min(self.len);
        if end == start {
            return Ok(Vec::new());
        }
        if end - start == self.len {
            return Ok(self.values()?.to_vec());
        }
        self.vec_f32(
            &self
                .row
                .narrow(0, start, end - start)
                .map_err(device_error)?,
        )
    }

    fn values(&self) -> LogitsResult<Arc<Vec<f32>>> {
        let mut slot = self.host.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = slot.as_ref() {
            return Ok(v.clone());
        }
        let v = Arc::new(self.row.to_vec1::<f32>().map_err(device_error)?);
        self.traffic.down(4 * v.len());
        self.traffic.whole_rows.fetch_add(1, Ordering::Relaxed);
        *slot = Some(v.clone());
        Ok(v)
    }

    fn host_values(&self) -> Option<Arc<Vec<f32>>> {
        self.copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    /// A row of `n` logits with repeats (ties), and a few NaNs and
    /// infinities where `specials` says.
    fn row(n: usize, seed: u64, specials: bool) -> Vec<f32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut v: Vec<f32> = (0..n)
            .map(|_| (rng.random_range(-400..400) as f32) / 40.0)
            .collect();
        if specials && n > 10 {
            v[3] = f32::NAN;
            v[n / 2] = f32::NEG_INFINITY;
        }
        v
    }

    fn device(values: &[f32]) -> (DeviceLogits, Arc<LogitsTraffic>) {
        let traffic = Arc::new(LogitsTraffic::default());
        let t = Tensor::from_vec(values.to_vec(), (1, values.len()), &Device::Cpu).unwrap();
        let d = DeviceLogits::new(&t, 0, &DeviceIds::default(), &traffic).unwrap();
        (d, traffic)
    }

    #[test]
    fn queries_answer_as_the_host_row_does() {
        for (n, seed) in [
            (1, 1),
            (63, 2),
            (64, 3),
            (1000, 4),
            (49_152, 5),
            (129_280, 6),
        ] {
            for specials in [false, true] {
                let values = row(n, seed, specials);
                let host = Arc::new(values.clone());
                let (d, _) = device(&values);
                let ctx = format!("n {n}, specials {specials}");
                let (g, w) = (d.argmax().unwrap(), host.argmax().unwrap());
                assert_eq!(g.token, w.token, "{ctx}");
                assert!(g.logit == w.logit || g.logit.is_nan() && w.logit.is_nan());
                for k in [0, 1, 2, 5, 40, 300, n + 3] {
                    let got = d.top_k(k).unwrap();
                    let want = host.top_k(k.min(n)).unwrap();
                    assert_eq!(got.len(), want.len(), "{ctx}, k {k}");
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(g.token, w.token, "{ctx}, k {k}");
                        assert!(g.logit == w.logit || g.logit.is_nan() && w.logit.is_nan());
                    }
                }
                let ids = [0, n as u32 - 1, n as u32, u32::MAX, (n / 3) as u32, 0];
                let (g, w) = (d.get(&ids).unwrap(), host.get(&ids).unwrap());
                for (g, w) in g.iter().zip(&w) {
                    assert!(g == w || g.is_nan() && w.is_nan(), "{ctx}: {g} vs {w}");
                }
                let (g, w) = (d.log_sum_exp().unwrap(), host.log_sum_exp().unwrap());
                assert!(
                    (g - w).abs() <= 1e-4 * w.abs().max(1.0) || g.is_nan() && w.is_nan(),
                    "{ctx}: {g} vs {w}"
                );
                for (start, len) in [(0, 1), (n / 2, 70), (n.saturating_sub(2), 9), (n + 5, 3)] {
                    let (g, w) = (
                        d.range(start, len).unwrap(),
                        host.range(start, len).unwrap(),
                    );
                    assert_eq!(g.len(), w.len(), "{ctx}");
                    assert!(
                        g.iter()
                            .zip(&w)
                            .all(|(a, b)| a == b || a.is_nan() && b.is_nan())
                    );
                }
            }
        }
    }

    #[test]
    fn a_query_moves_its_answer_not_the_row() {
        // Logits as a model gives them: few exact ties.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let values: Vec<f32> = (0..129_280)
            .map(|_| rng.random_range(-12.0..12.0))
            .collect();
        let (d, traffic) = device(&values);
        d.argmax().unwrap();
        assert_eq!(traffic.to_host_bytes(), 8, "the maximum and its id");
        d.get(&[1, 2, 3]).unwrap();
        assert_eq!(traffic.to_host_bytes(), 8 + 12);
        assert_eq!(traffic.to_device_bytes(), 12, "the ids asked for");
        let before = traffic.to_host_bytes();
        d.top_k(40).unwrap();
        let moved = traffic.to_host_bytes() - before;
        // The block maxima, then about 40 blocks of 64.
        assert!(moved < 129_280 * 4 / 20, "top-40 moved {moved} bytes");
        assert_eq!(traffic.whole_rows_copied(), 0);
        // The whole row is copied once, then every query reads the copy.
        let before = traffic.to_host_bytes();
        assert_eq!(d.values().unwrap().as_slice(), values.as_slice());
        d.values().unwrap();
        d.top_k(40).unwrap();
        d.argmax().unwrap();
        assert_eq!(traffic.to_host_bytes() - before, 129_280 * 4);
        assert_eq!(traffic.whole_rows_copied(), 1);
    }

    #[test]
    fn placement_follows_the_device_unless_forced() {
        assert!(!LogitsPlacement::Auto.on_device(&Device::Cpu));
        assert!(LogitsPlacement::Device.on_device(&Device::Cpu));
        assert!(!LogitsPlacement::Host.on_device(&Device::Cpu));
    }
}
