//! Per-sequence key/value caches, kept outside the model so one loaded model
//! serves many sequences.

use candle_core::{Result, Tensor};

/// Rows a cache grows by when full, so appends are amortised O(1).
pub const GROWTH_STEP: usize = 256;

/// One layer's keys and values, `[kv_heads, capacity, head_dim]`, of which
/// the first `len` positions are filled.
#[derive(Clone, Debug)]
struct LayerKv {
    k: Tensor,
    v: Tensor,
}

/// The attention cache of one sequence: keys and values of every layer for
/// every position so far.
#[derive(Clone, Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: vec![None; layers],
            len: 0,
            capacity: 0,
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the cache's buffers (capacity, not just the filled part).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum()
    }

    /// Positions the buffers have room for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A copy with buffers of its own (a clone shares them, and appending to
    /// one would write into the other).
    pub fn deep_copy(&self) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                l.as_ref()
                    .map(|l| {
                        Ok::<_, candle_core::Error>(LayerKv {
                            k: l.k.copy()?,
                            v: l.v.copy()?,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            layers,
            len: self.len,
            capacity: self.capacity,
        })
    }

    /// Forget positions from `len` on (for example to retry a step).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Append `k` (`[heads, new, dim]`) and `v` (`[v_heads, new, v_dim]`) to
    /// layer `layer` and return all of that layer's keys and values so far.
    ///
    /// Every layer appends the same number of positions per step; the step's
    /// length is committed with `advance` after the last layer.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (heads, new, dim) = k.dims3()?;
        // Keys and values may differ in heads and width (a latent cache keeps
        // the latent as "keys" and the rotary key as "values").
        let (v_heads, v_new, v_dim) = v.dims3()?;
        if v_new != new {
            candle_core::bail!("appending {new} keys but {v_new} values");
        }
        let need = self.len + new;
        let entry = &mut self.layers[layer];
        let grow = match entry {
            None => true,
            Some(l) => l.k.dim(1)? < need,
        };
        if grow {
            let capacity = need.div_ceil(GROWTH_STEP) * GROWTH_STEP;
            let k_buf = Tensor::zeros((heads, capacity, dim), k.dtype(), k.device())?;
            let v_buf = Tensor::zeros((v_heads, capacity, v_dim), v.dtype(), v.device())?;
            if let Some(old) = entry.as_ref()
                && self.len > 0
            {
                k_buf.slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                v_buf.slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
            }
            *entry = Some(LayerKv { k: k_buf, v: v_buf });
            self.capacity = self.capacity.max(capacity);
        }
        let l = entry.as_ref().expect("a layer cache was just ensured");
        l.k.slice_set(&k.contiguous()?, 1, self.len)?;
        l.v.slice_set(&v.contiguous()?, 1, self.len)?;
        Ok((l.k.narrow(1, 0, need)?, l.v.narrow(1, 0, need)?))
    }

    /// Commit `n` new positions, after every layer appended them.
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
